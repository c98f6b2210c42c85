rule train:
    input:
        train="results/{dataset}/coco/train.json",
        manifest="results/{dataset}/chips/manifest.json",
        shards=expand("results/{{dataset}}/chips/shard-{shard}.tar", shard=SHARDS),
    output:
        weights="results/{dataset}/models/{model}/model.pt",
        train_log="results/{dataset}/models/{model}/train_log.json",
        run="results/{dataset}/models/{model}/run.json",
    params:
        # Only this model's settings: editing another model's never reruns this job.
        hp=lambda w: as_json(model_hyperparameters(config, w.model)),
    threads: workflow.cores
    log:
        "logs/{dataset}/train-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/train-{model}.tsv"
    message:
        "Training {wildcards.model} on {wildcards.dataset}"
    shell:
        "{NADIR} train --dataset {wildcards.dataset} --model {wildcards.model} "
        "--hp {params.hp} --train {input.train} --manifest {input.manifest} "
        "--shards {input.shards} --out-dir $(dirname {output.weights}) "
        "--threads {threads} 2> {log}"
