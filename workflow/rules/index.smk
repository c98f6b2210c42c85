def index_inputs(wildcards):
    """sample: every generated image and label, named by scene (`image:T0000`). Fetched
    formats: the fetch manifest and the label files it lists (image headers are in the
    manifest, so images are not needed)."""
    dataset = wildcards.dataset
    if not is_fetched(dataset):
        named = {}
        for split, scene in scenes(dataset):
            named[input_name("image", scene)] = raw_image(dataset, split, scene)
            named[input_name("label", scene)] = raw_label(dataset, split, scene)
        return named
    manifest = fetch_manifest(dataset)
    labels = [s["label"] for s in manifest["scenes"] if s.get("label")] + manifest["label_files"]
    return {
        "manifest": fetch_manifest_path(dataset),
        "labels": [fetched_file(dataset, label) for label in labels],
    }


def index_sources(wildcards, input):
    """The index command's format and sources (arguments, quoted one by one in the command),
    with the staged (local) paths."""
    dataset = wildcards.dataset
    if not is_fetched(dataset):
        split_of = {scene: split for split, scene in scenes(dataset)}
        by_scene = files_by_owner(input.items(), ["image", "label"])
        arguments = ["--format", "sample"]
        for scene, files in by_scene.items():
            arguments += ["--scene", split_of[scene], files["image"], files["label"]]
        return arguments
    if "manifest" not in input.keys():
        # Evaluated once before the fetch checkpoint has run; the DAG is rebuilt after it.
        return ["--format", "pending-fetch"]
    files_dir = Path(input.manifest).parent / "files"
    return ["--format", config["datasets"][dataset]["format"], "--manifest", input.manifest,
            "--files-dir", str(files_dir)]


def index_spec(wildcards):
    """The dataset settings a fetched dataset's index reads (the sample has none)."""
    if not is_fetched(wildcards.dataset):
        return as_json({})
    return as_json(dataset_keys(wildcards.dataset, INDEX_KEYS))


rule index:
    input:
        unpack(index_inputs),
    output:
        scenes="results/{dataset}/index/scenes.csv",
        annotations="results/{dataset}/index/annotations.csv",
        categories="results/{dataset}/index/categories.json",
        summary="results/{dataset}/index/summary.json",
    params:
        sources=index_sources,
        spec=index_spec,
    log:
        "logs/{dataset}/index.log",
    benchmark:
        "results/benchmarks/{dataset}/index.tsv"
    message:
        "Indexing scenes and annotations of {wildcards.dataset}"
    shell:
        "{NADIR:q} index {params.sources:q} --spec {params.spec:q} "
        "--scenes {output.scenes:q} --annotations {output.annotations:q} "
        "--categories {output.categories:q} --summary {output.summary:q} {RASTER_LIMIT:q} "
        "2> {log:q}"
