"""Rule evaluate_chips: the COCO metrics of a model's detections on the val chips (on a CPU)."""

from nadir.core.jobs import run_job
from nadir.evaluate import score_chip_files

inp = snakemake.input
run_job(snakemake, lambda: score_chip_files(
    inp.predictions, inp.record, inp.val, snakemake.params.settings["max_detections"],
    metrics=snakemake.output.metrics))
