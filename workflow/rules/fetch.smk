# Datasets with a `source` (dota, xview, rareplanes): one checkpoint per dataset fetches every
# source entry into raw/<dataset>/files/ and writes the scene manifest that the index and chip
# jobs read (their job lists cannot come from the config, and storage cannot be listed).


checkpoint fetch:
    output:
        manifest="raw/{dataset}/manifest.json",
        files=directory("raw/{dataset}/files"),
    params:
        spec=lambda w: as_json(dataset_keys(w.dataset, FETCH_KEYS)),
        settings=as_json(config["fetch"]),
    log:
        "logs/{dataset}/fetch.log",
    message:
        "Fetching the sources of dataset {wildcards.dataset}"
    shell:
        "{NADIR:q} fetch --dataset {wildcards.dataset:q} --spec {params.spec:q} "
        "--settings {params.settings:q} --files-dir {output.files:q} "
        "--manifest {output.manifest:q} {RASTER_LIMIT:q} 2> {log:q}"
