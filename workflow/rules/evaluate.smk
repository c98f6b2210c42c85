# Evaluation on the val split. Only `evaluate` runs the model (a GPU job in the profiles): it
# writes the detections on the val chips and the device it ran on. Scoring them is CPU work, in
# jobs of their own: `evaluate_chips` (COCO metrics of the chips) and `evaluate_scenes` (the
# merge into whole scenes, COCO and the benchmark protocols), so a GPU pod never waits on
# scoring, and a scoring setting reruns only its CPU job.


rule evaluate:
    input:
        weights="results/{dataset}/models/{model}/model.pt",
        val="results/{dataset}/coco/val.json",
        shards=chip_shards,
    output:
        predictions="results/{dataset}/models/{model}/predictions.json",
        record="results/{dataset}/models/{model}/predictions_record.json",
    params:
        # Only what prediction uses: the scoring settings never rerun the model.
        settings=job_settings("evaluate", "evaluation")["evaluation"],
    threads: 8  # capped at --cores on a laptop; profiles set their own
    resources:
        # shards read where they are (staged only without S3); predictions.json: at most
        # max_detections detections of about 130 bytes per val chip (130 MB for 10,000 chips);
        # the chip cache if one is set
        disk_mb=disk_mb(writes=0.0, writes_mb=1000, reads_chips=True),
    log:
        "logs/{dataset}/evaluate-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/evaluate-{model}.tsv"
    message:
        "Detecting with {wildcards.model} on the val chips of {wildcards.dataset}"
    script:
        "../scripts/evaluate.py"


rule evaluate_chips:
    input:
        predictions="results/{dataset}/models/{model}/predictions.json",
        record="results/{dataset}/models/{model}/predictions_record.json",
        val="results/{dataset}/coco/val.json",
    output:
        metrics="results/{dataset}/models/{model}/metrics.json",
    params:
        settings=job_settings("evaluate_chips", "evaluation")["evaluation"],
    log:
        "logs/{dataset}/evaluate_chips-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/evaluate_chips-{model}.tsv"
    message:
        "Scoring {wildcards.model}'s detections on the val chips of {wildcards.dataset}"
    script:
        "../scripts/evaluate_chips.py"


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
