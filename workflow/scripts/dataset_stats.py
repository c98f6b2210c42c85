"""Rule dataset_stats: a dataset's statistics, their figure and its summary page."""

from nadir.core.jobs import run_job
from nadir.report import write_dataset_stats

inp, out = snakemake.input, snakemake.output
run_job(snakemake, lambda: write_dataset_stats(
    inp.scenes, inp.annotations, inp.categories, inp.summary, inp.coco_stats,
    inp.chips_manifest, json_out=out.json, png=out.png, html_out=out.html,
    title=snakemake.params.title))
