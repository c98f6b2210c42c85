# Datasets with a `source` (dota, xview, rareplanes): one checkpoint per dataset fetches every
# source entry into raw/<dataset>/files/ and writes the scene manifest that the index and chip
# jobs read (their job lists cannot come from the config, and storage cannot be listed).


# The `fetch` settings (cache, retries, timeouts, caps) change how sources are fetched, not what
# they hold: they reach the command through a global, not params, so tuning them never refetches
# (as the checkpoint settings in train.smk).
FETCH_SETTINGS = as_json(config["fetch"])


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
    log:
        "logs/{dataset}/fetch.log",
    message:
        "Fetching the sources of dataset {wildcards.dataset}"
    shell:
        "{NADIR:q} fetch --dataset {wildcards.dataset:q} --spec {params.spec:q} "
        "--settings {FETCH_SETTINGS:q} --files-dir {output.files:q} "
        "--manifest {output.manifest:q} {RASTER_LIMIT:q} 2> {log:q}"
