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
    message:
        "Plotting the loss curve of {wildcards.model} on {wildcards.dataset}"
    shell:
        "{NADIR} plot-loss --train-log {input} --out {output} "
        "--title '{wildcards.model} on {wildcards.dataset}' 2> {log}"


rule leaderboard:
    input:
        runs=expand("results/{run}/run.json", run=RUNS),
        metrics=expand("results/{run}/metrics.json", run=RUNS),
    output:
        csv="results/leaderboard.csv",
        html=report(
            "results/leaderboard.html",
            caption="../report/leaderboard.rst",
            category="Leaderboard",
            labels={"table": "leaderboard"},
        ),
    params:
        run_args=lambda w, input: " ".join(
            f"--run {r} {m}" for r, m in zip(input.runs, input.metrics)
        ),
    log:
        "logs/leaderboard.log",
    message:
        "Ranking {RUNS_COUNT} run(s) on the leaderboard"
    shell:
        "{NADIR} leaderboard {params.run_args} --csv {output.csv} --html {output.html} "
        "2> {log} | tee -a {log}"
