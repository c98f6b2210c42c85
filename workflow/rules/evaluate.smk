rule evaluate:
    input:
        weights="results/{dataset}/models/{model}/model.pt",
        val="results/{dataset}/coco/val.json",
        shards=expand("results/{{dataset}}/chips/shard-{shard}.tar", shard=SHARDS),
    output:
        predictions="results/{dataset}/models/{model}/predictions.json",
        metrics="results/{dataset}/models/{model}/metrics.json",
    params:
        hp=as_json(config["evaluation"]),
    threads: workflow.cores
    log:
        "logs/{dataset}/evaluate-{model}.log",
    message:
        "Evaluating {wildcards.model} on the val split of {wildcards.dataset}"
    shell:
        "{NADIR} evaluate --hp {params.hp} --weights {input.weights} --coco {input.val} "
        "--shards {input.shards} --predictions {output.predictions} "
        "--metrics {output.metrics} --threads {threads} 2> {log}"
