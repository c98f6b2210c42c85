# The report stage: each dataset's statistics and warnings, the evaluation figures, the
# leaderboard, the cost table and the terminal summary.
# Report entries: category = what the figure shows, subcategory = dataset, labels = model.
# The summary rules read several files per run or job: each is named `KIND:OWNER` (see
# nadir.core.named_inputs) and their scripts (workflow/scripts/) read them by name.

from nadir.report.costs import cost_inputs

# The leaderboard's files per run, by kind (nadir.report.leaderboard.RunFiles).
LEADERBOARD_RUN_FILES = {
    "run": "results/{dataset}/models/{model}/run.json",
    "metrics": "results/{dataset}/models/{model}/metrics.json",
    "scene_metrics": "results/{dataset}/models/{model}/scene_metrics.json",
    "train_benchmark": "results/benchmarks/{dataset}/train-{model}.tsv",
    "evaluate_benchmark": "results/benchmarks/{dataset}/evaluate-{model}.tsv",
    "scene_benchmark": "results/benchmarks/{dataset}/evaluate_scenes-{model}.tsv",
}


def cost_jobs():
    """(rule, job, benchmark file, device record or None) of every job the cost table covers:
    all jobs but `cost` and `summary`, which run after it, and the fetch checkpoints (whose
    outputs may come from storage alone: a benchmark beside them would refetch). A new rule
    adds its benchmark here."""
    jobs = []
    for d in DATASETS:
        jobs += [("index", d, f"results/benchmarks/{d}/index.tsv", None)]
        jobs += [("chip", f"{d}/{s}", f"results/benchmarks/{d}/chip-{s}.tsv", None)
                 for s in shards(d)]
        jobs += [(r, d, f"results/benchmarks/{d}/{r}.tsv", None)
                 for r in ("chip_manifest", "coco", "dataset_stats", "plot_class_ap", "compare")]
        if any(r.hp["eval_every"] for (rd, _), r in RUN_TABLE.items() if rd == d):
            jobs.append(("carve_selection", d, f"results/benchmarks/{d}/carve_selection.tsv",
                         None))
        for m in RUN_NAMES:
            run = f"results/{d}/models/{m}"
            jobs += [
                ("train", f"{d}/{m}", f"results/benchmarks/{d}/train-{m}.tsv", f"{run}/run.json"),
                ("evaluate", f"{d}/{m}", f"results/benchmarks/{d}/evaluate-{m}.tsv",
                 f"{run}/predictions_record.json"),
            ] + [(r, f"{d}/{m}", f"results/benchmarks/{d}/{r}-{m}.tsv", None)
                 for r in ("evaluate_chips", "evaluate_scenes", "loss_curve", "plot_pr", "plot_detections")]
    return jobs + [("leaderboard", "all", "results/benchmarks/leaderboard.tsv", None)]


COST_JOB_COUNT = len(cost_jobs())


def run_title(wildcards):
    """A per-run figure's title."""
    return f"{wildcards.model} on {wildcards.dataset}"
# One dataset's statistics, and its summary page in the report: every warning of the index
# (classes without an object, labels without images, label variants set aside) and of the
# chipping (classes whose objects no chip keeps), beside objects per class in scenes and chips.


rule dataset_stats:
    input:
        scenes="results/{dataset}/index/scenes.csv",
        annotations="results/{dataset}/index/annotations.csv",
        categories="results/{dataset}/index/categories.json",
        summary="results/{dataset}/index/summary.json",
        coco_stats="results/{dataset}/coco/stats.json",
        chips_manifest="results/{dataset}/chips/manifest.json",
    output:
        json="results/{dataset}/index/stats.json",
        png=report(
            "results/{dataset}/index/stats.png",
            caption="../report/dataset_stats.rst",
            category="Datasets",
            labels={"dataset": "{dataset}", "content": "statistics"},
        ),
        html=report(
            "results/{dataset}/index/summary.html",
            caption="../report/dataset_summary.rst",
            category="Datasets",
            labels={"dataset": "{dataset}", "content": "summary and warnings"},
        ),
    log:
        "logs/{dataset}/dataset_stats.log",
    params:
        title=lambda w: f"dataset {w.dataset}",
    message:
        "Computing statistics of dataset {wildcards.dataset}"
    benchmark:
        "results/benchmarks/{dataset}/dataset_stats.tsv"
    script:
        "../scripts/dataset_stats.py"


EVALUATION_FIGURES = (
    expand("results/{dataset}/class_ap.png", dataset=DATASETS)
    + expand("results/{run}/{figure}.png", run=RUNS, figure=["loss", "pr", "detections"])
)


rule loss_curve:
    input:
        "results/{dataset}/models/{model}/train_log.json",
    output:
        report(
            "results/{dataset}/models/{model}/loss.png",
            caption="../report/loss.rst",
            category="Training curves",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "model": "{model}"},
        ),
    params:
        title=run_title,
    log:
        "logs/{dataset}/loss_curve-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/loss_curve-{model}.tsv"
    message:
        "Plotting the loss curve of {wildcards.model} on {wildcards.dataset}"
    script:
        "../scripts/loss_curve.py"


rule plot_pr:
    input:
        chip="results/{dataset}/models/{model}/metrics.json",
        scene="results/{dataset}/models/{model}/scene_metrics.json",
    output:
        report(
            "results/{dataset}/models/{model}/pr.png",
            caption="../report/pr.rst",
            category="Precision-recall curves",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "model": "{model}"},
        ),
    params:
        title=run_title,
    log:
        "logs/{dataset}/plot_pr-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/plot_pr-{model}.tsv"
    message:
        "Plotting the precision-recall curves of {wildcards.model} on {wildcards.dataset}"
    script:
        "../scripts/plot_pr.py"


rule plot_detections:
    input:
        val="results/{dataset}/coco/val.json",
        predictions="results/{dataset}/models/{model}/predictions.json",
        shards=chip_shards,
        manifest="results/{dataset}/chips/manifest.json",
    output:
        report(
            "results/{dataset}/models/{model}/detections.png",
            caption="../report/detections.rst",
            category="Sample detections",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "model": "{model}"},
        ),
    params:
        settings=job_settings("plot_detections", "report", "inference"),
        title=run_title,
    resources:
        # shards staged only without S3; one PNG; the chip cache if one is set
        disk_mb=disk_mb(writes=0.0, writes_mb=1000, reads_chips=True),
    log:
        "logs/{dataset}/plot_detections-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/plot_detections-{model}.tsv"
    message:
        "Drawing val chips of {wildcards.dataset} with {wildcards.model}'s detections"
    script:
        "../scripts/plot_detections.py"


rule plot_class_ap:
    input:
        unpack(dataset_run_inputs({
            "metrics": "results/{dataset}/models/{model}/metrics.json",
            "scene_metrics": "results/{dataset}/models/{model}/scene_metrics.json",
        })),
    output:
        report(
            "results/{dataset}/class_ap.png",
            caption="../report/class_ap.rst",
            category="Per-class AP",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "heat map"},
        ),
    params:
        title=lambda w: f"Per-class AP on {w.dataset}",
    log:
        "logs/{dataset}/plot_class_ap.log",
    benchmark:
        "results/benchmarks/{dataset}/plot_class_ap.tsv"
    message:
        "Plotting per-class AP of every run on {wildcards.dataset}"
    script:
        "../scripts/plot_class_ap.py"


rule leaderboard:
    input:
        **run_inputs(RUN_TABLE, LEADERBOARD_RUN_FILES),
        **{input_name("comparison", d): f"results/{d}/comparison.json" for d in DATASETS},
    output:
        csv="results/leaderboard.csv",
        markdown="results/leaderboard.md",
        html=report(
            "results/leaderboard.html",
            caption="../report/leaderboard.rst",
            category="Leaderboard",
            labels={"table": "leaderboard"},
        ),
    log:
        "logs/leaderboard.log",
    benchmark:
        "results/benchmarks/leaderboard.tsv"
    message:
        "Ranking {RUNS_COUNT} run(s) on the leaderboard"
    script:
        "../scripts/leaderboard.py"


rule cost:
    input:
        **cost_inputs(cost_jobs()),
    output:
        csv="results/cost.csv",
        html=report(
            "results/cost.html",
            caption="../report/cost.rst",
            category="Cost",
            labels={"table": "cost per rule"},
        ),
    log:
        "logs/cost.log",
    benchmark:
        "results/benchmarks/cost.tsv"
    message:
        "Tabulating the cost of {COST_JOB_COUNT} job(s) per rule"
    script:
        "../scripts/cost.py"


# Runs on the machine that runs Snakemake (never in a pod), after every figure, so the
# leaderboard is the last thing the terminal shows.
rule summary:
    input:
        leaderboard="results/leaderboard.md",
        cost="results/cost.csv",
        figures=EVALUATION_FIGURES,
    output:
        "results/summary.txt",
    localrule: True
    log:
        "logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    message:
        "Printing the leaderboard"
    script:
        "../scripts/summary.py"
