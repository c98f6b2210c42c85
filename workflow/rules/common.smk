# Shared by every rule: config validation, the nadir command, and the job lists, which are
# derived from the config alone (never from listing storage, which S3 cannot do here).

import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(workflow.basedir)
# Rules run the checkout's own code (also inside pods, which receive the source archive).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)
os.environ.setdefault("GDAL_PAM_ENABLED", "NO")
sys.path.insert(0, str(ROOT / "src"))

from nadir.config import ConfigError, dataset_chipping, runs, validate
from nadir.datasets.sample import SampleSpec
from nadir.errors import NadirError
from nadir.fetch import read_scene_manifest
from nadir.named_inputs import files_by_owner, input_name, run_inputs
from nadir.preflight import SettingsError, check_controller_start
from nadir.training.catalogue import CATALOGUE
from nadir.urls import publish, redact

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


# Job command lines carry URLs in their redacted form (no user info, query or fragment: where
# tokens and pre-signatures live); the jobs, which inherit this environment (or parse the
# workflow again in their pod), look the whole URL up (nadir.urls).
publish(config_urls())


# Shell commands quote every field (`{x:q}`): names in paths come from data (nadir.names holds
# them to a rule, and quoting keeps them one argument whatever they hold). Option lists are
# Python lists, quoted item by item.
NADIR = [sys.executable, "-m", "nadir"]
# The largest declared raster size any job opens (nadir.rasters); a global, not a param, so
# changing it reruns nothing: it refuses files, it never changes an output.
RASTER_LIMIT = ["--max-raster-values", str(config["rasters"]["max_values"])]
DATASETS = sorted(config["datasets"])
# Every training run: (dataset, run name) -> nadir.config.Run. A run is a model, a sweep cell of
# it, or a further repeat; its name is the `{model}` wildcard of every per-run rule and its
# folder under results/<dataset>/models/. The names are the same for every dataset.
RUN_TABLE = {(run.dataset, run.name): run for run in runs(config)}
RUN_NAMES = sorted({name for _, name in RUN_TABLE})
RUNS = [f"{d}/models/{name}" for d, name in RUN_TABLE]
RUNS_COUNT = len(RUNS)
SAMPLE_KEYS = ["train_scenes", "val_scenes", "scene_size", "objects_per_scene", "seed"]
# Formats fetched from a `source` (rules/fetch.smk), and the dataset keys each stage depends on.
FETCHED_FORMATS = ("dota", "xview", "rareplanes")
FETCH_KEYS = ["format", "version", "source", "tiled"]
INDEX_KEYS = ["format", "version", "class_attribute", "split", "classes", "on_bad_input"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(re.escape(name) for name in RUN_NAMES),
    shard=r"\d{3}",


def run_of(wildcards):
    """The Run (model, settings) behind a per-run job's wildcards."""
    return RUN_TABLE[(wildcards.dataset, wildcards.model)]


def dataset_run_inputs(paths):
    """Input function: the files of every run of the job's dataset, named by kind and run
    (nadir.named_inputs.run_inputs; `paths`: kind -> pattern with {dataset} and {model})."""
    return lambda w: run_inputs([(w.dataset, name) for name in RUN_NAMES], paths)


def shards(dataset):
    """Shard numbers of a dataset (its own `chipping.shards`, else the shared one)."""
    return [f"{i:03d}" for i in range(dataset_chipping(config, dataset)["shards"])]


def shard_files(extension):
    """Input function: every shard file (`tar` or `json`) of the job's dataset."""
    return lambda w: [f"results/{w.dataset}/chips/shard-{s}.{extension}"
                      for s in shards(w.dataset)]


def sample_spec(dataset):
    return SampleSpec(**dataset_keys(dataset, SAMPLE_KEYS))


def scenes(dataset):
    """(split, scene id) of every scene of a dataset, in a fixed order."""
    return sample_spec(dataset).scenes()


def raw_image(dataset, split, scene):
    return f"raw/{dataset}/{split}/images/{scene}.tif"


def raw_label(dataset, split, scene):
    return f"raw/{dataset}/{split}/labelTxt/{scene}.txt"


def is_fetched(dataset):
    return config["datasets"][dataset]["format"] in FETCHED_FORMATS


def dataset_keys(dataset, keys):
    return {k: config["datasets"][dataset][k] for k in keys}


def fetched_file(dataset, relative):
    """A file of a fetched dataset, by its path relative to the fetch folder (as the manifest
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
        try:  # its names become job inputs and command arguments: held to the name rule
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


def dataset_images(dataset):
    """Raw images of the scenes to chip, in a fixed order."""
    if not is_fetched(dataset):
        return [raw_image(dataset, sp, sc) for sp, sc in scenes(dataset)]
    return [fetched_file(dataset, s["image"]) for s in fetched_scenes(dataset)]


def shard_images(dataset, shard):
    """Scenes are dealt to shards round-robin in scene order: reproducible from the config and
    the fetch manifest (the chip manifest records each scene's shard)."""
    return dataset_images(dataset)[int(shard) :: len(shards(dataset))]


def shard_sidecars(dataset, shard):
    """The georeferencing sidecars of a shard's images (a PNG tile's `.aux.xml`), staged
    beside them: the chip job reads them (nadir.georeferencing)."""
    if not is_fetched(dataset):
        return []
    chosen = fetched_scenes(dataset)[int(shard) :: len(shards(dataset))]
    return [fetched_file(dataset, p) for s in chosen for p in s.get("sidecars", [])]


def as_json(value):
    """A config value as a JSON argument; shell commands quote it with `{params.x:q}`."""
    return json.dumps(value, sort_keys=True)
