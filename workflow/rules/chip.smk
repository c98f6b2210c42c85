rule chip:
    input:
        scenes="results/{dataset}/index/scenes.csv",
        annotations="results/{dataset}/index/annotations.csv",
        images=lambda w: shard_images(w.dataset, w.shard),
        sidecars=lambda w: shard_sidecars(w.dataset, w.shard),
    output:
        tar="results/{dataset}/chips/shard-{shard}.tar",
        chips="results/{dataset}/chips/shard-{shard}.json",
    params:
        # The dataset's own settings: editing another dataset's never rechips this one.
        chipping=lambda w: as_json(dataset_chipping(config, w.dataset)),
    threads: 2
    log:
        "logs/{dataset}/chip-{shard}.log",
    benchmark:
        "results/benchmarks/{dataset}/chip-{shard}.tsv"
    message:
        "Chipping shard {wildcards.shard} of {wildcards.dataset}"
    shell:
        "{NADIR:q} chip --params {params.chipping:q} --scenes {input.scenes:q} "
        "--annotations {input.annotations:q} --images {input.images:q} --tar {output.tar:q} "
        "--json {output.chips:q} --threads {threads:q} {RASTER_LIMIT:q} 2> {log:q}"


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
    shell:
        "{NADIR:q} chip-manifest --shards {input.chips:q} --out {output.manifest:q} 2> {log:q}"
