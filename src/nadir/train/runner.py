"""One training run from start to finish, as the train rule asks for it.

Verify the pretrained weights, digest the inputs, open the checkpoint store under the run's
fingerprint, train with the model's backend, write resolved_config.json and run.json (with the
recipe's numbers: learning rate after scaling, iterations from epochs, chips, global batch), and
remove the checkpoints once the weights are safely written. The train job (`train`) is `run` on the
rule's files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nadir.config.catalogue import entry, weight_source
from nadir.core.errors import NadirError
from nadir.storage.s3 import storage_endpoint
from nadir.train.backends import TrainJob, TrainOutputs, get_backend
from nadir.train.checkpoints import open_store
from nadir.train.provenance import fingerprint, input_digests
from nadir.train.weights import verify_recorded

log = logging.getLogger(__name__)


def run_bands(job: TrainJob) -> dict:
    """The bands the run's model takes (as the chips name them), which of them are RGB, and
    whether a band-mixing stem maps them to RGB: what the leaderboard and report show."""
    chips = job.chip_params
    bands = list(chips.bands) if chips.bands else None
    rgb = chips.rgb_positions
    return {"bands": bands, "rgb_bands": [bands[i] for i in rgb] if bands and rgb else None,
            "band_mixing": bool(job.hp.get("band_mixing")) and chips.model_bands != 3}


def run(job: TrainJob, checkpoint_root: str | None = None, s3_endpoint: str | None = None,
        checkpoint_keep: int | None = None) -> dict:
    """Train `job` and write its records; returns the run record (run.json).

    `checkpoint_root` is a directory or s3://BUCKET/PREFIX; the run's checkpoints go to a
    subfolder named by its fingerprint (None: no checkpoints).
    """
    from nadir.train.recipes import training_plan, with_length

    backend_name = entry(job.model).backend
    backend = get_backend(backend_name)
    # A run measured in epochs: its iterations from the chips and the global batch.
    chips = len(json.loads(job.train_json.read_text())["images"])
    global_batch = job.hp["batch_size"] * backend.processes(job)
    job.hp = with_length(job.hp, chips, global_batch)
    job.plan = plan = training_plan(job.model, job.hp, chips, global_batch)
    source = weight_source(job.model, job.hp["pretrained"])
    if source is not None and job.weights_file is None:
        raise NadirError(f"{job.model} with pretrained: {job.hp['pretrained']} needs its "
                         f"weights file ({source.file_name}); the fetch_weights rule provides it")
    # The file as fetched: its digest recorded at download, and the catalogue's where published.
    weights_sha256 = verify_recorded(job.weights_file, source.sha256) if source else None
    job.input_digests = input_digests(job, weights_sha256)
    if checkpoint_root:
        job.checkpoints = open_store(f"{checkpoint_root.rstrip('/')}/{fingerprint(job)}",
                                     s3_endpoint, checkpoint_keep)
    resolved = backend.resolved_config(job) | {"recipe": plan.record()}
    result = backend.train(job)
    resolved["training"] = result
    job.outputs.resolved_config.write_text(json.dumps(resolved, indent=1) + "\n")
    record = {
        "dataset": job.dataset, "model": job.model, "backend": backend_name,
        "hyperparameters": job.hp, "recipe": plan.record(), "training": result,
        "inputs": job.input_digests,
        "code": resolved["code"], "versions": resolved["versions"],
        "bands": run_bands(job),
    }
    job.outputs.run.write_text(json.dumps(record, indent=1) + "\n")
    if job.checkpoints is not None:
        job.checkpoints.clear()  # the run is complete: its weights are in the outputs
        log.info("removed the run's checkpoints from %s", job.checkpoints.describe())
    return record


def train(dataset: str, model: str, hp: dict, train: str | Path, manifest: str | Path,
          shards: list[str | Path], weights: str | Path, train_log: str | Path,
          run_record: str | Path, resolved_config: str | Path,
          pretrained: str | Path | None = None, selection: str | Path | None = None,
          checkpoints: dict | None = None, checkpoint_folder: str | None = None,
          threads: int = 1, world_size: int | None = None) -> dict:
    """The train job: `run` of one run of the config (`hp`: its resolved settings) on the
    rule's files. Checkpoints go under `checkpoint_folder` (the run's folder in the config's
    `checkpoints.location`), every `checkpoints["every"]` iterations, the newest
    `checkpoints["keep"]` kept; S3 with the storage's endpoint."""
    checkpoints = checkpoints or {"every": 0}  # none written unless the config asks
    job = TrainJob(dataset=dataset, model=model, hp=hp, train_json=Path(train),
                   manifest=Path(manifest), shards=[str(p) for p in shards],
                   outputs=TrainOutputs(Path(weights), Path(train_log), Path(run_record),
                                        Path(resolved_config)),
                   threads=threads, checkpoint_every=checkpoints["every"],
                   weights_file=Path(pretrained) if pretrained else None,
                   world_size=world_size,
                   selection_json=Path(selection) if selection else None)
    return run(job, checkpoint_folder, storage_endpoint(), checkpoints.get("keep"))
