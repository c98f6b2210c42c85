"""Rule coco: the shards' chip lists as one COCO file per split, and their statistics."""

from nadir.coco import write_coco
from nadir.core.jobs import run_job

out = snakemake.output
run_job(snakemake, lambda: write_coco(
    snakemake.input.chips, snakemake.input.categories, {"train": out.train, "val": out.val},
    out.stats))
