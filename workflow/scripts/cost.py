"""Rule cost: the cost per rule from every job's benchmark and device record, named by job."""

from pathlib import Path

from nadir.cli import run_rule_script
from nadir.report.costs import cost_of_files

out = snakemake.output
run_rule_script(snakemake, lambda: cost_of_files(snakemake.input, Path(out.csv),
                                                 Path(out.html)))
