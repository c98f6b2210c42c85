CHIP_EVALUATION_KEYS = ["score_threshold", "max_detections", "batch_size"]


rule evaluate:
    input:
        weights="results/{dataset}/models/{model}/model.pt",
        val="results/{dataset}/coco/val.json",
        shards=shard_files("tar"),
    output:
        predictions="results/{dataset}/models/{model}/predictions.json",
        metrics="results/{dataset}/models/{model}/metrics.json",
    params:
        # Only what prediction uses: the scene-level settings never rerun the model.
        hp=as_json({k: config["evaluation"][k] for k in CHIP_EVALUATION_KEYS}),
    threads: 8  # capped at --cores on a laptop; profiles set their own
    log:
        "logs/{dataset}/evaluate-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/evaluate-{model}.tsv"
    message:
        "Evaluating {wildcards.model} on the val chips of {wildcards.dataset}"
    shell:
        "{NADIR:q} evaluate --hp {params.hp:q} --weights {input.weights:q} --coco {input.val:q} "
        "--shards {input.shards:q} --predictions {output.predictions:q} "
        "--metrics {output.metrics:q} --threads {threads:q} 2> {log:q}"


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
        nms_iou=config["evaluation"]["scene_nms_iou"],
        max_detections=config["evaluation"]["scene_max_detections"],
        protocols=lambda w: config["evaluation"]["protocols"][
            config["datasets"][w.dataset]["format"]],
    log:
        "logs/{dataset}/evaluate_scenes-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/evaluate_scenes-{model}.tsv"
    message:
        "Merging {wildcards.model}'s chip detections into whole {wildcards.dataset} val scenes "
        "and scoring them ({params.protocols})"
    shell:
        "{NADIR:q} evaluate-scenes --predictions {input.predictions:q} --coco {input.val:q} "
        "--scenes {input.scenes:q} --annotations {input.annotations:q} "
        "--nms-iou {params.nms_iou:q} --max-detections {params.max_detections:q} "
        "--protocols {params.protocols:q} --submission {output.submission:q} "
        "--scene-predictions {output.predictions:q} --metrics {output.metrics:q} 2> {log:q}"
