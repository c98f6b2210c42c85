# Comparison of each dataset's runs: a paired bootstrap over its val scenes of the difference in
# scene-level AP between settings (models, sweep cells; repeats averaged), which the leaderboard
# marks and the report shows. Only the comparison's own settings and the runs' scene
# predictions rerun it.


rule compare:
    input:
        unpack(dataset_run_inputs({
            "run": "results/{dataset}/models/{model}/run.json",
            "scene_predictions": "results/{dataset}/models/{model}/scene_predictions.json",
        })),
        val="results/{dataset}/coco/val.json",
        annotations="results/{dataset}/index/annotations.csv",
    output:
        json="results/{dataset}/comparison.json",
        html=report(
            "results/{dataset}/comparison.html",
            caption="../report/comparison.rst",
            category="Comparisons",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "paired bootstrap"},
        ),
    params:
        settings=job_settings("compare", "comparison", "evaluation"),
    log:
        "logs/{dataset}/compare.log",
    benchmark:
        "results/benchmarks/{dataset}/compare.tsv"
    message:
        "Comparing the runs on {wildcards.dataset} (paired bootstrap over its val scenes)"
    script:
        "../scripts/compare.py"
