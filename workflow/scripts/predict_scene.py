"""Rule predict_scene: one trained run's window detections in one scene (the model step)."""

from nadir.core.jobs import run_job
from nadir.predict import detect

inp, out, params = snakemake.input, snakemake.output, snakemake.params
run_job(snakemake, lambda: detect(
    inp.weights, params.source, snakemake.wildcards.scene, params.anonymous, params.settings,
    windows=out.windows, overview=out.overview, threads=snakemake.threads,
    max_raster_values=snakemake.config["rasters"]["max_values"]))
