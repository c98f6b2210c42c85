"""Rule list_scenes: the raster objects under an s3:// prefix of inference.scenes."""

from nadir.core.jobs import run_job
from nadir.predict import list_scenes

run_job(snakemake, lambda: list_scenes(snakemake.params.prefix, snakemake.output.listing))
