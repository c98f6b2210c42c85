# The summarise stage: leaderboard, cost table, evaluation figures and the terminal summary.
# Report entries: category = what the figure shows, subcategory = dataset, labels = model.


def cost_job_args(wildcards, input):
    """--job / --device-job arguments, staged paths in the order of `cost_jobs()`."""
    args = []
    benchmarks = iter(input.benchmarks)
    records = iter(input.records)
    for rule_name, _, record in cost_jobs():
        if record is None:
            args.append(f"--job {rule_name} {next(benchmarks)}")
        else:
            args.append(f"--device-job {rule_name} {next(benchmarks)} {next(records)}")
    return " ".join(args)


def cost_jobs():
    """(rule, benchmark file, device record or None) of every job the cost table covers:
    all jobs but `cost` and `summary`, which run after it. A new rule adds its benchmark here."""
    jobs = []
    for d in DATASETS:
        if config["datasets"][d]["format"] == "sample":
            jobs.append(("generate_sample", f"results/benchmarks/{d}/generate_sample.tsv", None))
        jobs += [("index", f"results/benchmarks/{d}/index.tsv", None)]
        jobs += [("chip", f"results/benchmarks/{d}/chip-{s}.tsv", None) for s in shards(d)]
        jobs += [("chip_manifest", f"results/benchmarks/{d}/chip_manifest.tsv", None),
                 ("coco", f"results/benchmarks/{d}/coco.tsv", None),
                 ("plot_class_ap", f"results/benchmarks/{d}/plot_class_ap.tsv", None),
                 ("compare", f"results/benchmarks/{d}/compare.tsv", None)]
        if any(r.hp["eval_every"] for (rd, _), r in RUN_TABLE.items() if rd == d):
            jobs.append(("carve_selection", f"results/benchmarks/{d}/carve_selection.tsv", None))
        for m in RUN_NAMES:
            run = f"results/{d}/models/{m}"
            jobs += [
                ("train", f"results/benchmarks/{d}/train-{m}.tsv", f"{run}/run.json"),
                ("evaluate", f"results/benchmarks/{d}/evaluate-{m}.tsv", f"{run}/metrics.json"),
                ("evaluate_scenes", f"results/benchmarks/{d}/evaluate_scenes-{m}.tsv", None),
            ] + [(r, f"results/benchmarks/{d}/{r}-{m}.tsv", None)
                 for r in ("loss_curve", "plot_pr", "plot_detections")]
    return jobs + [("leaderboard", "results/benchmarks/leaderboard.tsv", None)]


COST_JOB_COUNT = len(cost_jobs())
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
    log:
        "logs/{dataset}/loss_curve-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/loss_curve-{model}.tsv"
    message:
        "Plotting the loss curve of {wildcards.model} on {wildcards.dataset}"
    shell:
        "{NADIR} plot-loss --train-log {input} --out {output} "
        "--title '{wildcards.model} on {wildcards.dataset}' 2> {log}"


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
    log:
        "logs/{dataset}/plot_pr-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/plot_pr-{model}.tsv"
    message:
        "Plotting the precision-recall curves of {wildcards.model} on {wildcards.dataset}"
    shell:
        "{NADIR} plot-pr --metrics {input.chip} --scene-metrics {input.scene} --out {output} "
        "--title '{wildcards.model} on {wildcards.dataset}' 2> {log}"


rule plot_detections:
    input:
        val="results/{dataset}/coco/val.json",
        predictions="results/{dataset}/models/{model}/predictions.json",
        shards=shard_files("tar"),
    output:
        report(
            "results/{dataset}/models/{model}/detections.png",
            caption="../report/detections.rst",
            category="Sample detections",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "model": "{model}"},
        ),
    params:
        chips=config["report"]["sample_chips"],
        min_score=config["report"]["min_score"],
    log:
        "logs/{dataset}/plot_detections-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/plot_detections-{model}.tsv"
    message:
        "Drawing {params.chips} val chips of {wildcards.dataset} with {wildcards.model}'s "
        "detections"
    shell:
        "{NADIR} plot-detections --coco {input.val} --predictions {input.predictions} "
        "--shards {input.shards} --chips {params.chips} --min-score {params.min_score} "
        "--out {output} --title '{wildcards.model} on {wildcards.dataset}' 2> {log}"


rule plot_class_ap:
    input:
        chip=expand("results/{{dataset}}/models/{model}/metrics.json", model=RUN_NAMES),
        scene=expand("results/{{dataset}}/models/{model}/scene_metrics.json", model=RUN_NAMES),
    output:
        report(
            "results/{dataset}/class_ap.png",
            caption="../report/class_ap.rst",
            category="Per-class AP",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "heat map"},
        ),
    params:
        models=" ".join(RUN_NAMES),
    log:
        "logs/{dataset}/plot_class_ap.log",
    benchmark:
        "results/benchmarks/{dataset}/plot_class_ap.tsv"
    message:
        "Plotting per-class AP of every run on {wildcards.dataset}"
    shell:
        "{NADIR} plot-class-ap --models {params.models} --metrics {input.chip} "
        "--scene-metrics {input.scene} --out {output} "
        "--title 'Per-class AP on {wildcards.dataset}' 2> {log}"


rule leaderboard:
    input:
        runs=expand("results/{run}/run.json", run=RUNS),
        metrics=expand("results/{run}/metrics.json", run=RUNS),
        scene_metrics=expand("results/{run}/scene_metrics.json", run=RUNS),
        train=expand("results/benchmarks/{dataset}/train-{model}.tsv", dataset=DATASETS,
                     model=RUN_NAMES),
        evaluate=expand("results/benchmarks/{dataset}/evaluate-{model}.tsv",
                        dataset=DATASETS, model=RUN_NAMES),
        evaluate_scenes=expand("results/benchmarks/{dataset}/evaluate_scenes-{model}.tsv",
                               dataset=DATASETS, model=RUN_NAMES),
        comparisons=expand("results/{dataset}/comparison.json", dataset=DATASETS),
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
    shell:
        "{NADIR} leaderboard --runs {input.runs} --metrics {input.metrics} "
        "--scene-metrics {input.scene_metrics} --train-benchmarks {input.train} "
        "--evaluate-benchmarks {input.evaluate} --scene-benchmarks {input.evaluate_scenes} "
        "--comparisons {input.comparisons} "
        "--csv {output.csv} --markdown {output.markdown} --html {output.html} 2> {log}"


rule cost:
    input:
        benchmarks=[tsv for _, tsv, _ in cost_jobs()],
        records=[record for _, _, record in cost_jobs() if record is not None],
    output:
        csv="results/cost.csv",
        html=report(
            "results/cost.html",
            caption="../report/cost.rst",
            category="Cost",
            labels={"table": "cost per rule"},
        ),
    params:
        jobs=cost_job_args,
    log:
        "logs/cost.log",
    benchmark:
        "results/benchmarks/cost.tsv"
    message:
        "Tabulating the cost of {COST_JOB_COUNT} job(s) per rule"
    shell:
        "{NADIR} cost {params.jobs} --csv {output.csv} --html {output.html} 2> {log}"


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
    shell:
        "{NADIR} summary --leaderboard {input.leaderboard} --cost {input.cost} "
        "--out {output} 2> {log}"
