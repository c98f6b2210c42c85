# nadir: overhead imagery → chips → COCO → trained detectors → leaderboard and report.
# Users edit config/config.yaml; see README.md for the laptop and Kubernetes commands.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/dataset_stats.smk"
include: "workflow/rules/chip.smk"
include: "workflow/rules/coco.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/leaderboard.csv",
        "results/leaderboard.html",
        expand("results/{run}/loss.png", run=RUNS),
        expand("results/{dataset}/index/stats.png", dataset=DATASETS),
    default_target: True
