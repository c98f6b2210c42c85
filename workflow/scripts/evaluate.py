"""Rule evaluate: a trained model's detections on the val chips (the model step, on a GPU)."""

from nadir.core.jobs import run_job
from nadir.evaluate import predict_val_chips

inp, out = snakemake.input, snakemake.output
run_job(snakemake, lambda: predict_val_chips(
    inp.weights, inp.val, inp.shards, snakemake.params.settings, predictions=out.predictions,
    record=out.record, threads=snakemake.threads))
