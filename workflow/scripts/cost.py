"""Rule cost: the cost per rule from every job's benchmark and device record, named by job."""

from nadir.core.jobs import run_job
from nadir.report import cost_of_files

out = snakemake.output
run_job(snakemake, lambda: cost_of_files(snakemake.input, out.csv, out.html))
