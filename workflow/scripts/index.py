"""Rule index: a fetched dataset's manifest and labels as the normalised tables."""

from nadir.core.jobs import run_job
from nadir.index import index

out = snakemake.output
run_job(snakemake, lambda: index(
    snakemake.input.manifest, snakemake.params.spec, scenes=out.scenes,
    annotations=out.annotations, categories=out.categories, summary=out.summary,
    max_raster_values=snakemake.config["rasters"]["max_values"]))
