"""Rule leaderboard: rank every run from its files, named by run (nadir.core.named_inputs)."""

from nadir.core.jobs import run_job
from nadir.report import leaderboard_of_files

out = snakemake.output
run_job(snakemake, lambda: leaderboard_of_files(snakemake.input, out.csv, out.markdown,
                                                out.html))
