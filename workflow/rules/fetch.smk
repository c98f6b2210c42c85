# Every dataset is fetched: one checkpoint per dataset brings each source entry into
# raw/<dataset>/files/ (the sample is generated there, in DOTA's layout) and writes the scene
# manifest that the index and chip jobs read (their job lists cannot come from the config, and
# storage cannot be listed). The `fetch` settings (cache, retries, timeouts, caps) and
# `rasters.max_values` change how sources are fetched, not what they hold: the script reads
# them from the config, so tuning them never refetches.


checkpoint fetch:
    output:
        manifest="raw/{dataset}/manifest.json",
        files=directory("raw/{dataset}/files"),
    params:
        # Its URLs are redacted (common.smk); the redacted form changes whenever the URL does,
        # so an edited URL still refetches.
        spec=lambda w: dataset_settings("fetch", w.dataset),
    log:
        "logs/{dataset}/fetch.log",
    message:
        "Fetching the sources of dataset {wildcards.dataset}"
    script:
        "../scripts/fetch.py"
