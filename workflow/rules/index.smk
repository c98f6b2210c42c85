def index_scene_args(wildcards, input):
    """--scene SPLIT IMAGE LABEL for every scene, with the staged (local) paths."""
    splits = [split for split, _ in scenes(wildcards.dataset)]
    return " ".join(
        f"--scene {sp} {im} {lb}" for sp, im, lb in zip(splits, input.images, input.labels)
    )


rule index:
    input:
        images=lambda w: [raw_image(w.dataset, sp, sc) for sp, sc in scenes(w.dataset)],
        labels=lambda w: [raw_label(w.dataset, sp, sc) for sp, sc in scenes(w.dataset)],
    output:
        scenes="results/{dataset}/index/scenes.csv",
        annotations="results/{dataset}/index/annotations.csv",
        categories="results/{dataset}/index/categories.json",
    params:
        format=lambda w: config["datasets"][w.dataset]["format"],
        scene_args=index_scene_args,
    log:
        "logs/{dataset}/index.log",
    benchmark:
        "results/benchmarks/{dataset}/index.tsv"
    message:
        "Indexing scenes and annotations of {wildcards.dataset}"
    shell:
        "{NADIR} index --format {params.format} {params.scene_args} "
        "--out-dir $(dirname {output.scenes}) 2> {log}"
