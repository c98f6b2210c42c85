"""The one interface every training backend implements, and what all of them share.

A backend trains a catalogue model on a COCO split read from the chip shards, resumes from the
newest matching checkpoint, predicts COCO detections, and describes a run completely (the
resolved config saved beside the weights). `nadir train` / `nadir evaluate` only talk to this.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol

from nadir import __version__
from nadir.fetch import sha256_of
from nadir.training.catalogue import entry, weight_source
from nadir.training.checkpoints import CheckpointStore

PACKAGES = ["torch", "torchvision", "detectron2", "numpy", "pillow", "rasterio",
            "faster-coco-eval"]


@dataclass
class TrainJob:
    """Everything one training run needs; the same job always gives the same run."""

    dataset: str
    model: str
    hp: dict  # resolved: `training`, the catalogue's model defaults, the user's overrides
    train_json: Path
    manifest: Path
    shards: list[Path]
    out_dir: Path
    threads: int = 1
    checkpoints: CheckpointStore | None = None
    checkpoint_every: int = 0  # iterations; 0 writes no checkpoint
    weights_file: Path | None = None  # the pretrained weights the hp ask for
    world_size: int | None = None  # processes; None: one per visible GPU (one on the CPU)
    input_digests: dict = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def train(self, job: TrainJob) -> dict:
        """Train (resuming when a checkpoint matches); write model.pt and train_log.json."""

    def resume(self, job: TrainJob) -> dict | None:
        """The newest checkpoint's state for this job, or None to start from iteration 0."""

    def predict(self, weights: Path, coco_json: Path, shards: list[Path], hp: dict,
                threads: int = 1) -> list[dict]:
        """COCO detections (xywh, category id, score) for every image of a split."""

    def resolved_config(self, job: TrainJob) -> dict:
        """Everything needed to trace and redo the run."""


def get_backend(name: str) -> Backend:
    if name == "torchvision":
        from nadir.training.torchvision_backend import TorchvisionBackend

        return TorchvisionBackend()
    if name == "detectron2":
        from nadir.training.detectron2_backend import Detectron2Backend

        return Detectron2Backend()
    if name == "transformers":
        from nadir.training.loop_backends import TransformersBackend

        return TransformersBackend()
    if name == "yolox":
        from nadir.training.loop_backends import YoloxBackend

        return YoloxBackend()
    raise KeyError(f"unknown backend {name!r}")


def device_name() -> str:
    """The device predictions and training run on here: "cuda" or "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def backend_of_weights(weights: Path) -> Backend:
    """The backend that trained a `model.pt` (every backend saves its catalogue name in it)."""
    import torch

    saved = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    return get_backend(entry(saved["model"]).backend)


def input_digests(job: TrainJob, weights_sha256: str | None = None) -> dict:
    """SHA-256 (16 hex digits) of each input file; `weights_sha256` spares hashing a weights
    file (hundreds of MB) a second time when its checksum was just verified."""
    weights = job.weights_file and (weights_sha256 or sha256_of(job.weights_file))
    return {"train_coco": sha256_of(job.train_json)[:16],
            "chip_manifest": sha256_of(job.manifest)[:16],
            "weights": weights[:16] if weights else None}


def fingerprint(job: TrainJob) -> str:
    """What a checkpoint must share with a job to be resumed by it: model, settings, data.

    Checkpoints live under this digest, so a rerun with other settings or other chips never
    resumes a stale run, and the old run's checkpoints are left alone.
    """
    key = {"model": job.model, "hp": job.hp, "inputs": job.input_digests or input_digests(job)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def code_version() -> dict:
    """The git commit when the checkout has one, and always a digest of nadir's own source.

    Pods receive Snakemake's source archive without `.git`, so the source digest is what ties
    a result to its code everywhere.
    """
    package = Path(__file__).resolve().parents[1]
    sources = sorted(package.rglob("*.py"))
    h = hashlib.sha256()
    for path in sources:
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    version = {"nadir": __version__, "source_sha256": h.hexdigest()[:16], "git_commit": None,
               "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            version["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "."],
                                    capture_output=True, text=True, timeout=10)
            version["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return version


def installed_versions(names: list[str]) -> dict:
    """Installed version of each distribution, None where it is not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def package_versions() -> dict:
    return {"python": platform.python_version(), **installed_versions(PACKAGES)}


def base_resolved_config(job: TrainJob) -> dict:
    """The backend-independent part of a run's resolved config."""
    model = entry(job.model)
    source = weight_source(job.model, job.hp.get("pretrained", "none"))
    return {
        "dataset": job.dataset,
        "model": {"name": model.name, "backend": model.backend,
                  "architecture": model.architecture, "description": model.description,
                  "licence": model.licence},
        "hyperparameters": job.hp,
        "pretrained": None if source is None else {
            "kind": job.hp["pretrained"], "url": source.url, "sha256": source.sha256,
            "licence": source.licence},
        "inputs": job.input_digests or input_digests(job),
        "checkpoints": {"location": job.checkpoints.describe() if job.checkpoints else None,
                        "every": job.checkpoint_every, "fingerprint": fingerprint(job)},
        "code": code_version(),
        "versions": package_versions(),
    }
