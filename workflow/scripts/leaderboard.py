"""Rule leaderboard: rank every run from its files, named by run (nadir.core.named_inputs)."""

from pathlib import Path

from nadir.cli import run_rule_script
from nadir.report.leaderboard import leaderboard_of_files

out = snakemake.output
run_rule_script(snakemake, lambda: leaderboard_of_files(
    snakemake.input, Path(out.csv), Path(out.markdown), Path(out.html)))
