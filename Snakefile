# nadir: overhead imagery → chips → COCO → trained detectors → leaderboard and report.
# Users edit config/config.yaml; see README.md for the laptop and Kubernetes commands.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/chip.smk"
include: "workflow/rules/coco.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"


# Every product a user keeps is a target, so deleting any of them (locally or in the bucket)
# reruns the job that made it and everything downstream, and nothing else.
rule all:
    input:
        "results/leaderboard.csv",
        "results/leaderboard.html",
        expand("results/{dataset}/chips/manifest.json", dataset=DATASETS),
        expand("results/{dataset}/coco/{split}.json", dataset=DATASETS, split=["train", "val"]),
        expand("results/{dataset}/index/stats.png", dataset=DATASETS),
        expand("results/{dataset}/comparison.{ext}", dataset=DATASETS, ext=["json", "html"]),
        expand(
            "results/{run}/{file}",
            run=RUNS,
            file=["model.pt", "run.json", "predictions.json", "metrics.json", "loss.png"],
        ),
        "results/summary.txt",
        predict_targets,  # the `inference` runs and scenes (none by default)
    default_target: True
