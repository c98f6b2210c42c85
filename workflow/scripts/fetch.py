"""Rule fetch: a dataset's sources into its files folder, and its scene manifest."""

from nadir.core.jobs import run_job
from nadir.fetch import fetch

out, config = snakemake.output, snakemake.config
run_job(snakemake, lambda: fetch(
    snakemake.wildcards.dataset, snakemake.params.spec, settings=config["fetch"],
    files=out.files, manifest=out.manifest, max_raster_values=config["rasters"]["max_values"]))
