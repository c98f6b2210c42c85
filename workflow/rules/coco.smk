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
    script:
        "../scripts/coco.py"


# Only runs with `training.eval_every` ask for it: they train on fit.json and score
# selection.json while training; val stays the split the evaluate job scores.
rule carve_selection:
    input:
        train="results/{dataset}/coco/train.json",
    output:
        fit="results/{dataset}/coco/fit.json",
        selection="results/{dataset}/coco/selection.json",
    params:
        fraction=lambda w: config["datasets"][w.dataset]["split"]["selection_fraction"],
        seed=lambda w: config["datasets"][w.dataset]["split"]["seed"],
    log:
        "logs/{dataset}/carve_selection.log",
    benchmark:
        "results/benchmarks/{dataset}/carve_selection.tsv"
    message:
        "Holding train scenes of {wildcards.dataset} out as the selection split"
    script:
        "../scripts/carve_selection.py"
