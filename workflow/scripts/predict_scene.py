"""Rule predict_scene: one trained run applied to one scene."""

from nadir.core.jobs import run_job
from nadir.predict import predict

inp, out, params = snakemake.input, snakemake.output, snakemake.params
run_job(snakemake, lambda: predict(
    inp.weights, inp.run, params.source, snakemake.wildcards.scene, params.anonymous,
    params.settings, outputs={"geojson": out.geojson, "geopackage": out.geopackage,
                              "summary": out.summary, "quicklook": out.quicklook},
    threads=snakemake.threads, max_raster_values=snakemake.config["rasters"]["max_values"]))
