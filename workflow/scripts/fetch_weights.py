"""Rule fetch_weights: a pretrained weights file of the catalogue, downloaded and verified."""

from nadir.core.jobs import run_job
from nadir.train import fetch_catalogue_weights

run_job(snakemake, lambda: fetch_catalogue_weights(snakemake.wildcards.weights_file,
                                                   snakemake.output.weights))
