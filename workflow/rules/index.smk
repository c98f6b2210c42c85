# One index path for every format: the fetch manifest and the label files it lists (image
# headers are in the manifest, so images are not needed) become the normalised tables.


def index_inputs(wildcards):
    manifest = fetch_manifest(wildcards.dataset)
    labels = [s["label"] for s in manifest["scenes"] if s.get("label")] + manifest["label_files"]
    return {
        "manifest": fetch_manifest_path(wildcards.dataset),
        "labels": [fetched_file(wildcards.dataset, label) for label in labels],
    }


rule index:
    input:
        unpack(index_inputs),
    output:
        scenes="results/{dataset}/index/scenes.csv",
        annotations="results/{dataset}/index/annotations.csv",
        categories="results/{dataset}/index/categories.json",
        summary="results/{dataset}/index/summary.json",
    params:
        spec=lambda w: dataset_settings("index", w.dataset),
    log:
        "logs/{dataset}/index.log",
    benchmark:
        "results/benchmarks/{dataset}/index.tsv"
    message:
        "Indexing scenes and annotations of {wildcards.dataset}"
    script:
        "../scripts/index.py"
