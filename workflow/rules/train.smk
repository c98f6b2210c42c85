# Training: one job per run (dataset, model, sweep cell, repeat: the `{model}` wildcard is the
# run's name, see common.smk), plus one download per pretrained weights file.
# The checkpoint settings reach the job through the config, not params, so that moving or
# retuning checkpoints never reruns a finished training job.

from nadir.config.catalogue import weight_files, weight_source

WEIGHT_FILES = weight_files()


def _pretrained(run):
    """The weights file a run starts from under the config, or None (a config error says why)."""
    try:
        return weight_source(run.model, run.hp["pretrained"])
    except KeyError as error:
        raise WorkflowError(f"config key models.{run.model} (run {run.name} on {run.dataset}): "
                            f"{error.args[0]}") from None


def pretrained_input(wildcards):
    source = _pretrained(run_of(wildcards))
    return [] if source is None else [f"weights/{source.file_name}"]


def pretrained_record(wildcards):
    """The record fetch_weights wrote beside the file: training checks the file against the
    digest it holds (nadir.train.weights.verify_recorded)."""
    return [f"{path}.json" for path in pretrained_input(wildcards)]


for _run in RUN_TABLE.values():
    _pretrained(_run)  # fail at parse time, not in a job


def _checkpoint_root():
    """Where checkpoints go: the config's location, else beside the results in their storage."""
    location = config["checkpoints"]["location"]
    if location:
        return location.rstrip("/")
    settings = workflow.storage_settings
    if settings.default_storage_provider == "s3" and settings.default_storage_prefix:
        return settings.default_storage_prefix.rstrip("/") + "/checkpoints"
    return "checkpoints"


# The train script finds the run's checkpoint folder under this location.
config["checkpoints"]["location"] = _checkpoint_root()


rule fetch_weights:
    output:
        weights="weights/{weights_file}",
        record="weights/{weights_file}.json",
    wildcard_constraints:
        weights_file="|".join(re.escape(name) for name in WEIGHT_FILES),
    log:
        "logs/weights/{weights_file}.log",
    message:
        "Fetching pretrained weights {wildcards.weights_file}"
    script:
        "../scripts/fetch_weights.py"


def selects(wildcards):
    """Whether the run scores a selection split while it trains (training.eval_every)."""
    return run_of(wildcards).hp["eval_every"] > 0


rule train:
    input:
        train=lambda w: f"results/{w.dataset}/coco/{'fit' if selects(w) else 'train'}.json",
        selection=lambda w: [f"results/{w.dataset}/coco/selection.json"] if selects(w) else [],
        manifest="results/{dataset}/chips/manifest.json",
        shards=chip_shards,
        pretrained=pretrained_input,
        pretrained_record=pretrained_record,
    output:
        weights="results/{dataset}/models/{model}/model.pt",
        train_log="results/{dataset}/models/{model}/train_log.json",
        run="results/{dataset}/models/{model}/run.json",
        resolved="results/{dataset}/models/{model}/resolved_config.json",
    params:
        # Only this run's settings: editing another model's or sweep cell's never reruns it.
        hp=lambda w: param(run_of(w).hp),
        model=lambda w: run_of(w).model,
    threads: 8  # capped at --cores on a laptop; profiles set their own
    resources:
        # shards read where they are (staged only without S3), by every backend (detectron2
        # too: no chip is written out); checkpoints, weights, the chip cache if one is set
        # (docs/kubernetes.md, "Sizes")
        disk_mb=disk_mb(writes=0.0, writes_mb=9000, minimum_mb=10000, reads_chips=True),
    log:
        "logs/{dataset}/train-{model}.log",
    benchmark:
        "results/benchmarks/{dataset}/train-{model}.tsv"
    message:
        # Where the run's checkpoints go (the script finds them there too).
        f"Training {{wildcards.model}} on {{wildcards.dataset}}, checkpoints in "
        f"{config['checkpoints']['location']}/{{wildcards.dataset}}/{{wildcards.model}}"
    script:
        "../scripts/train.py"
