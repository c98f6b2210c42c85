"""What identifies a training run: its inputs' digests, its fingerprint, its code and versions.

The fingerprint decides which checkpoints a job may resume; the resolved config saved beside
the weights is built from the rest, so a result can be traced to its code, data and settings.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from nadir import __version__
from nadir.config.catalogue import entry, weight_source
from nadir.core.hashing import sha256_of
from nadir.train.backends import TrainJob

PACKAGES = ["torch", "torchvision", "detectron2", "numpy", "pillow", "rasterio",
            "faster-coco-eval"]


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
        # S603/S607: fixed arguments, and git from the user's PATH (their environment is trusted)
        commit = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"],  # noqa: S603,S607
                                capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            version["git_commit"] = commit.stdout.strip()
            status = subprocess.run(  # noqa: S603 - as above
                ["git", "-C", str(package), "status", "--porcelain", "."],  # noqa: S607
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
