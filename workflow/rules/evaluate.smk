rule evaluate:
    input:
        weights="results/{dataset}/models/{model}/model.pt",
        val="results/{dataset}/coco/val.json",
        shards=chip_shards,
    output:
        predictions="results/{dataset}/models/{model}/predictions.json",
        metrics="results/{dataset}/models/{model}/metrics.json",
    params:
        # Only what prediction uses: the scene-level settings never rerun the model.
        settings=job_settings("evaluate", "evaluation")["evaluation"],
    threads: 8  # capped at --cores on a laptop; profiles set their own
    log:
        "logs/{dataset}/evaluate-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/evaluate-{model}.tsv"
    message:
        "Evaluating {wildcards.model} on the val chips of {wildcards.dataset}"
    script:
        "../scripts/evaluate.py"


def scene_evaluation_settings(wildcards):
    """The scene-level settings, with the protocols of the dataset's format."""
    settings = job_settings("evaluate_scenes", "evaluation")["evaluation"]
    return {**settings, "protocols": settings["protocols"][
        config["datasets"][wildcards.dataset]["format"]]}


rule evaluate_scenes:
    input:
        predictions="results/{dataset}/models/{model}/predictions.json",
        val="results/{dataset}/coco/val.json",
        scenes="results/{dataset}/index/scenes.csv",
        annotations="results/{dataset}/index/annotations.csv",
    output:
        predictions="results/{dataset}/models/{model}/scene_predictions.json",
        metrics="results/{dataset}/models/{model}/scene_metrics.json",
        submission="results/{dataset}/models/{model}/submission.zip",
    params:
        settings=scene_evaluation_settings,
    log:
        "logs/{dataset}/evaluate_scenes-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/evaluate_scenes-{model}.tsv"
    message:
        "Merging {wildcards.model}'s chip detections into whole {wildcards.dataset} val scenes "
        "and scoring them ({params.settings[protocols]})"
    script:
        "../scripts/evaluate_scenes.py"
