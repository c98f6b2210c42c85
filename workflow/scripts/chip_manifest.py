"""Rule chip_manifest: every shard's parameters, versions and counts in one file."""

from nadir.chip import write_chip_manifest
from nadir.core.jobs import run_job

run_job(snakemake, lambda: write_chip_manifest(snakemake.input.chips,
                                               snakemake.output.manifest))
