"""Rule summary: the leaderboard and the total cost, printed last."""

from nadir.core.jobs import run_job
from nadir.report import write_summary

run_job(snakemake, lambda: write_summary(snakemake.input.leaderboard, snakemake.input.cost,
                                         snakemake.output[0]))
