# Datasets with a `source` (dota, xview, rareplanes): one checkpoint per dataset fetches every
# source entry into raw/<dataset>/files/ and writes the scene manifest that the index and chip
# jobs read (their job lists cannot come from the config, and storage cannot be listed).


def fetch_spec(dataset):
    """The dataset settings the fetch job reads, its URLs redacted for the command line (the
    redacted form changes whenever the URL does, so an edited URL still refetches)."""
    spec = dataset_keys(dataset, FETCH_KEYS)
    sources = [{**entry, "url": redact(entry["url"])} for entry in spec["source"]]
    return {**spec, "source": sources}


checkpoint fetch:
    output:
        manifest="raw/{dataset}/manifest.json",
        files=directory("raw/{dataset}/files"),
    params:
        spec=lambda w: as_json(fetch_spec(w.dataset)),
        settings=as_json(config["fetch"]),
    log:
        "logs/{dataset}/fetch.log",
    message:
        "Fetching the sources of dataset {wildcards.dataset}"
    shell:
        "{NADIR} fetch --dataset {wildcards.dataset} --spec {params.spec:q} "
        "--settings {params.settings:q} --files-dir {output.files} "
        "--manifest {output.manifest} 2> {log}"
