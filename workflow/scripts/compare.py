"""Rule compare: paired bootstrap between a dataset's runs, their files named by run."""

from nadir.compare import compare_files
from nadir.core.jobs import run_job

inp, out, settings = snakemake.input, snakemake.output, snakemake.params.settings
run_job(snakemake, lambda: compare_files(
    inp, inp.val, inp.annotations, max_detections=settings["evaluation"]["scene_max_detections"],
    **settings["comparison"], json_out=out.json, html_out=out.html))
