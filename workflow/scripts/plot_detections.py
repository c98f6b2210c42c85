"""Rule plot_detections: sample val chips with ground truth and a run's detections."""

from nadir.core.jobs import run_job
from nadir.report import plot_detections_of_files

inp, settings = snakemake.input, snakemake.params.settings
run_job(snakemake, lambda: plot_detections_of_files(
    inp.val, inp.predictions, inp.shards, snakemake.output[0], snakemake.params.title,
    manifest=inp.manifest, count=settings["report"]["sample_chips"],
    min_score=settings["inference"]["score_threshold"]))
