"""Rule plot_class_ap: per-class AP of a dataset's runs, their metrics named by run."""

from nadir.core.jobs import run_job
from nadir.report import plot_class_heatmap_of_files

run_job(snakemake, lambda: plot_class_heatmap_of_files(
    snakemake.input, snakemake.output[0], snakemake.params.title))
