rule coco:
    input:
        chips=shard_files("json"),
        categories="results/{dataset}/index/categories.json",
    output:
        train="results/{dataset}/coco/train.json",
        val="results/{dataset}/coco/val.json",
        stats="results/{dataset}/coco/stats.json",
    log:
        "logs/{dataset}/coco.log",
    benchmark:
        "results/benchmarks/{dataset}/coco.tsv"
    message:
        "Writing COCO annotations of {wildcards.dataset}"
    shell:
        "{NADIR} coco --shards {input.chips} --categories {input.categories} "
        "--train {output.train} --val {output.val} --stats {output.stats} 2> {log}"
