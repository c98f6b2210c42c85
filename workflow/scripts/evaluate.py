"""Rule evaluate: a trained model's detections on the val chips, and their COCO metrics."""

from nadir.core.jobs import run_job
from nadir.evaluate import evaluate_model

inp, out = snakemake.input, snakemake.output
run_job(snakemake, lambda: evaluate_model(
    inp.weights, inp.val, inp.shards, snakemake.params.settings, predictions=out.predictions,
    metrics=out.metrics, threads=snakemake.threads))
