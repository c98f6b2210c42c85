"""Rule chip: one shard of a dataset's scenes cut into chips."""

from nadir.chip import cut_shard
from nadir.core.jobs import run_job

inp = snakemake.input
run_job(snakemake, lambda: cut_shard(
    inp.scenes, inp.annotations, inp.images, snakemake.params.chipping,
    tar=snakemake.output.tar, chip_list=snakemake.output.chips, threads=snakemake.threads,
    max_raster_values=snakemake.config["rasters"]["max_values"]))
