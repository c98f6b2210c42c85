def shard_images(wildcards):
    """The raw images of a shard's scenes."""
    return [fetched_file(wildcards.dataset, s["image"])
            for s in shard_scenes(wildcards.dataset, wildcards.shard)]


def shard_sidecars(wildcards):
    """The georeferencing sidecars of a shard's images (a PNG tile's `.aux.xml`), staged
    beside them: the chip job reads them (nadir.raster.georeferencing)."""
    return [fetched_file(wildcards.dataset, p)
            for s in shard_scenes(wildcards.dataset, wildcards.shard)
            for p in s.get("sidecars", [])]


rule chip:
    input:
        scenes="results/{dataset}/index/scenes.csv",
        annotations="results/{dataset}/index/annotations.csv",
        images=shard_images,
        sidecars=shard_sidecars,
    output:
        tar="results/{dataset}/chips/shard-{shard}.tar",
        chips="results/{dataset}/chips/shard-{shard}.json",
    params:
        # The dataset's own settings: editing another dataset's never rechips this one.
        chipping=lambda w: param(dataset_chipping(config, w.dataset)),
    threads: 2
    resources:
        # its scenes, plus its shard: overlapping PNG chips are about 1.5 times the scenes
        disk_mb=disk_mb(writes=2.0, writes_mb=1000, minimum_mb=4000),
    log:
        "logs/{dataset}/chip-{shard}.log",
    benchmark:
        "results/benchmarks/{dataset}/chip-{shard}.tsv"
    message:
        "Chipping shard {wildcards.shard} of {wildcards.dataset}"
    script:
        "../scripts/chip.py"


rule chip_manifest:
    input:
        chips=shard_files("json"),
    output:
        manifest="results/{dataset}/chips/manifest.json",
    log:
        "logs/{dataset}/chip_manifest.log",
    benchmark:
        "results/benchmarks/{dataset}/chip_manifest.tsv"
    message:
        "Writing the chip manifest of {wildcards.dataset}"
    script:
        "../scripts/chip_manifest.py"
