"""Rule plot_class_ap: per-class AP of a dataset's runs, their metrics named by run."""

from pathlib import Path

from nadir.cli import run_rule_script
from nadir.report.figures import plot_class_heatmap_of_files

run_rule_script(snakemake, lambda: plot_class_heatmap_of_files(
    snakemake.input, Path(snakemake.output[0]), snakemake.params.title))
