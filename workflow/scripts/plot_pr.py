"""Rule plot_pr: a run's precision-recall curves per class, on chips and on scenes."""

from nadir.core.jobs import run_job
from nadir.report import plot_pr_curves_of_files

inp = snakemake.input
run_job(snakemake, lambda: plot_pr_curves_of_files(inp.chip, inp.scene, snakemake.output[0],
                                                   snakemake.params.title))
