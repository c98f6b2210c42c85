# Shared by every rule: config validation, what the jobs get from the workflow, the job lists
# (derived from the config and the fetch manifests alone, never from listing storage, which S3
# cannot do here), and the controller's claim on the results location.
#
# Every rule calls its code the same way: `script:` (workflow/scripts/<rule>.py), a few lines
# handing the rule's named inputs, outputs, params and threads to one stage function of nadir
# (nadir.core.jobs.run_job). A rule's `params` are what must rerun it when they change: the
# config keys whose schema entry names the job (`x-jobs`, job_settings). Settings that change
# how a job runs but never what it makes (checkpoints, fetch caps and retries, the raster size
# bound, the storage's endpoint) reach the script through `snakemake.config` or the
# environment, so changing them reruns nothing.

import json
import math
import os
import re
import sys
from pathlib import Path

from snakemake.storage import flag_with_storage_object

ROOT = Path(workflow.basedir)
# Rules run the checkout's own code (also inside pods, which receive the source archive).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)
os.environ.setdefault("GDAL_PAM_ENABLED", "NO")
sys.path.insert(0, str(ROOT / "src"))

from nadir.config import ConfigError, dataset_chipping, runs, validate
from nadir.config.catalogue import CATALOGUE
from nadir.core.errors import NadirError
from nadir.core.named_inputs import files_by_owner, input_name, run_inputs
from nadir.core.schema import applies_to_format, job_keys
from nadir.fetch import read_scene_manifest
from nadir.storage.controller import Lease, claim, owner_store, release
from nadir.storage.preflight import SettingsError, check_controller_start
from nadir.storage.s3 import ENDPOINT_VARIABLE
from nadir.storage.shards import CACHE_BYTES_VARIABLE, CACHE_DIR_VARIABLE
from nadir.storage.urls import publish, redact

try:
    validate(config, list(CATALOGUE))
except ConfigError as error:
    raise WorkflowError(str(error)) from None

# Controller start (never in a job: Snakemake reads this file in every pod too): a profile's
# placeholders, missing S3 keys or an S3 endpoint that does not answer stop the run here, with
# one message naming what to set, before the DAG is built from storage.
if workflow.is_main_process:
    try:
        check_controller_start(workflow)
    except SettingsError as error:
        raise WorkflowError(str(error)) from None


def config_urls():
    """Every URL the config names: dataset sources and inference scenes."""
    for dataset in config["datasets"].values():
        yield from (entry["url"] for entry in dataset.get("source") or [])
    yield from (s if isinstance(s, str) else s["source"] for s in config["inference"]["scenes"])


# Jobs get URLs in their redacted form only (no user info, query or fragment: where tokens and
# pre-signatures live), in their params and in the config their scripts receive (Snakemake
# writes it into each job's script file); the jobs, which inherit this environment (or parse
# the workflow again in their pod), look the whole URL up (nadir.storage.urls).
publish(config_urls())
for _dataset in config["datasets"].values():
    for _entry in _dataset.get("source") or []:
        _entry["url"] = redact(_entry["url"])
config["inference"]["scenes"] = [
    redact(s) if isinstance(s, str) else {**s, "source": redact(s["source"])}
    for s in config["inference"]["scenes"]
]


def storage_s3_settings():
    """Snakemake's S3 storage settings (endpoint, keys), or None without S3 storage."""
    s3 = (workflow.storage_provider_settings or {}).get("s3")
    return s3.get_settings() if s3 else None


# Jobs that read or write the storage themselves (checkpoints, inference scenes and prefixes)
# use its endpoint, from the environment as the URLs (nadir.storage.s3.storage_endpoint).
if getattr(storage_s3_settings(), "endpoint_url", None):
    os.environ[ENDPOINT_VARIABLE] = storage_s3_settings().endpoint_url

# The chip readers' node-local cache (nadir.storage.shards.ChipCache), from the environment
# like the endpoint: it changes how a job reads, never what it makes.
if config["streaming"]["cache_dir"]:
    os.environ[CACHE_DIR_VARIABLE] = config["streaming"]["cache_dir"]
    os.environ[CACHE_BYTES_VARIABLE] = str(int(config["streaming"]["cache_gib"] * 2**30))

DATASETS = sorted(config["datasets"])
# Every training run: (dataset, run name) -> nadir.config.Run. A run is a model, a sweep cell of
# it, or a further repeat; its name is the `{model}` wildcard of every per-run rule and its
# folder under results/<dataset>/models/. The names are the same for every dataset.
RUN_TABLE = {(run.dataset, run.name): run for run in runs(config)}
RUN_NAMES = sorted({name for _, name in RUN_TABLE})
RUNS = [f"{d}/models/{name}" for d, name in RUN_TABLE]
RUNS_COUNT = len(RUNS)


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(re.escape(name) for name in RUN_NAMES),
    shard=r"\d{3}",


def param(value):
    """A config value as a job param, its keys sorted at every level: Snakemake reruns a job
    whose params changed, and the order keys were written in is no change."""
    return json.loads(json.dumps(value, sort_keys=True))


def job_settings(job, *sections):
    """{section: {key: value}} of the config keys of `sections` whose schema names `job`
    (`x-jobs`): a job's params, so that exactly those keys rerun it."""
    return param({section: {key: config[section][key] for key in job_keys(job, section)}
                  for section in sections})


def dataset_settings(job, dataset):
    """The keys of a dataset's entry that `job` reads (`x-jobs`) and that apply to its format
    (`x-formats`)."""
    spec = config["datasets"][dataset]
    return param({key: spec[key] for key in job_keys(job, "dataset")
                  if applies_to_format(key, spec["format"])})


def run_of(wildcards):
    """The Run (model, settings) behind a per-run job's wildcards."""
    return RUN_TABLE[(wildcards.dataset, wildcards.model)]


def dataset_run_inputs(paths):
    """Input function: the files of every run of the job's dataset, named by kind and run
    (nadir.core.named_inputs.run_inputs; `paths`: kind -> pattern with {dataset} and {model})."""
    return lambda w: run_inputs([(w.dataset, name) for name in RUN_NAMES], paths)


def shards(dataset):
    """Shard numbers of a dataset (its own `chipping.shards`, else the shared one)."""
    return [f"{i:03d}" for i in range(dataset_chipping(config, dataset)["shards"])]


def shard_files(extension):
    """Input function: every shard file (`tar` or `json`) of the job's dataset."""
    return lambda w: [f"results/{w.dataset}/chips/shard-{s}.{extension}"
                      for s in shards(w.dataset)]


# --- each pod's ephemeral storage -----------------------------------------------------------
# A pod's disk holds what its job stages (its inputs, but storage inputs it reads where they are),
# what it writes (outputs, unpacked files, checkpoints), and the source archive, logs and
# Snakemake's records. A job that needs more than its request is evicted by the kubelet; one
# that asks for more than a node has stays pending. Rules declare `disk_mb` from the sizes of
# their inputs, which Snakemake reads from storage when it schedules the job.
DISK_MARGIN_MB = 1000  # the source archive, logs, Snakemake's records


def staged_mb(input):
    """MB of a job's inputs that its pod stages: every input but storage ones marked not to be
    retrieved (read where they are)."""
    return sum(size for f, size in zip(input, input.size_files_mb)
               if not (f.is_storage and f.should_not_be_retrieved_from_storage))


def chip_cache_mb():
    """MB the node-local chip cache may fill (`streaming.cache_dir`, at most
    `streaming.cache_gib`), which a job that reads chips writes into; 0 without a cache."""
    streaming = config["streaming"]
    return math.ceil(streaming["cache_gib"] * 1024) if streaming["cache_dir"] else 0


def disk_mb(writes=1.0, writes_mb=0, minimum_mb=2000, reads_chips=False):
    """Resource disk_mb (a pod's ephemeral-storage request, MB): what the job stages, plus what
    it writes (`writes` times the MB of all its inputs, staged or read where they are: a number
    or a function of the wildcards; plus `writes_mb`) and the margin; at least `minimum_mb`.
    The written part grows with the attempt, so a job evicted for disk is retried with more.
    A job that `reads_chips` from the shards also counts the chip cache it may fill."""
    def request(wildcards, input, attempt):
        ratio = writes(wildcards) if callable(writes) else writes
        return max(minimum_mb, math.ceil(
            staged_mb(input) + (ratio * input.size_mb + writes_mb + DISK_MARGIN_MB) * attempt)
        ) + (chip_cache_mb() if reads_chips else 0)
    return request


def chip_shards(wildcards):
    """Input function: every chip shard (`tar`) of the job's dataset, for the jobs that read
    chips. With S3 default storage the shards are inputs that Snakemake does not retrieve: the
    DAG, reruns and reports see them as any input, and the job gets their s3:// URLs and reads
    the chips it needs where they are (nadir.storage.shards.ShardReader)."""
    paths = shard_files("tar")(wildcards)
    default = workflow.storage_settings  # (`storage` is a Snakemake keyword)
    if default.default_storage_provider != "s3":
        return paths
    provider = workflow.storage_registry.default_storage_provider
    prefix = default.default_storage_prefix.rstrip("/")
    return [flag_with_storage_object(path, provider.object(f"{prefix}/{os.path.normpath(path)}",
                                                           retrieve=False))
            for path in paths]


def fetched_file(dataset, relative):
    """A fetched file of a dataset, by its path relative to the fetch folder (as the manifest
    names it)."""
    return f"raw/{dataset}/files/{relative}"


def fetch_manifest_path(dataset):
    """The fetch checkpoint's manifest; brought from storage when only the storage has it."""
    path = checkpoints.fetch.get(dataset=dataset).output.manifest
    if not os.path.exists(path) and path.is_storage:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        path.storage_object.retrieve_object()
    return path


_MANIFESTS = {}


def fetch_manifest(dataset):
    """The parsed manifest, parsed once per version of the file: input functions ask for it
    for every job, and a real dataset's manifest lists thousands of scenes."""
    path = fetch_manifest_path(dataset)
    key = (str(path), os.stat(path).st_mtime_ns)
    if key not in _MANIFESTS:
        try:  # its names become job inputs: held to the name rule
            _MANIFESTS[key] = read_scene_manifest(Path(path))
        except NadirError as error:
            raise WorkflowError(str(error)) from None
    return _MANIFESTS[key]


def fetched_scenes(dataset):
    """The fetch manifest's scenes to chip, in a fixed order: sorted scene names, images with
    labels (xView's labels are one file, so all its images)."""
    manifest = fetch_manifest(dataset)
    return [s for s in manifest["scenes"]
            if manifest["format"] == "xview" or s["label"] is not None]


def shard_scenes(dataset, shard):
    """Scenes are dealt to shards round-robin in scene order: reproducible from the config and
    the fetch manifest (the chip manifest records each scene's shard)."""
    return fetched_scenes(dataset)[int(shard) :: len(shards(dataset))]


# --- one controller per results location (nadir.storage.controller) -------------------------
# The run claims its S3 default storage prefix, or its working directory, before its first job
# and gives it back when it ends. Jobs (started with --no-hooks), dry runs and reports never run
# these handlers.


def _owner_store():
    default = workflow.storage_settings  # (`storage` is a Snakemake keyword)
    prefix = default.default_storage_prefix if default.default_storage_provider == "s3" else None
    settings = storage_s3_settings() if prefix else None
    return owner_store(
        prefix,
        getattr(settings, "endpoint_url", None),
        getattr(settings, "access_key", None),
        getattr(settings, "secret_key", None),
    )


_OWNER = {}


onstart:
    try:
        _OWNER["record"] = claim(_owner_store())
        _OWNER["lease"] = Lease(_owner_store(), _OWNER["record"])
    except NadirError as error:
        raise WorkflowError(str(error)) from None


onsuccess:
    if "record" in _OWNER:
        release(_owner_store(), _OWNER["record"], _OWNER["lease"])


onerror:
    if "record" in _OWNER:
        release(_owner_store(), _OWNER["record"], _OWNER["lease"])
