# The embedded sample dataset, generated from a seed (one rule per sample dataset in config).

for _dataset in DATASETS:
    if config["datasets"][_dataset]["format"] != "sample":
        continue

    rule:
        name:
            f"generate_sample_{_dataset}"
        output:
            images=[raw_image(_dataset, sp, sc) for sp, sc in scenes(_dataset)],
            labels=[raw_label(_dataset, sp, sc) for sp, sc in scenes(_dataset)],
        params:
            spec=as_json(dataset_keys(_dataset, SAMPLE_KEYS)),
        log:
            f"logs/{_dataset}/generate_sample.log",
        benchmark:
            f"results/benchmarks/{_dataset}/generate_sample.tsv"
        message:
            f"Generating the synthetic sample dataset '{_dataset}'"
        shell:
            "{NADIR:q} sample --spec {params.spec:q} --images {output.images:q} "
            "--labels {output.labels:q} 2> {log:q}"
