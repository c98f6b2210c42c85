"""Rule carve_selection: train scenes held out by scene as the selection split."""

from nadir.coco import write_selection_split
from nadir.core.jobs import run_job

params, out = snakemake.params, snakemake.output
run_job(snakemake, lambda: write_selection_split(
    snakemake.input.train, params.fraction, params.seed, fit=out.fit, selection=out.selection))
