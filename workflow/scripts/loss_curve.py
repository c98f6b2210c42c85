"""Rule loss_curve: a run's loss and learning-rate curves."""

from nadir.core.jobs import run_job
from nadir.report import plot_loss_curve

run_job(snakemake, lambda: plot_loss_curve(snakemake.input[0], snakemake.output[0],
                                           snakemake.params.title))
