"""The training job and the one interface every training backend implements.

A backend trains a catalogue model on a COCO split read from the chip shards, resumes from the
newest matching checkpoint, predicts COCO detections, and describes a run completely (the
resolved config saved beside the weights). This module imports no backend: `registry` finds
them by name, `provenance` describes a job, `loop` holds the helpers their loops share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nadir.train.checkpoints import CheckpointStore


@dataclass(frozen=True)
class TrainOutputs:
    """The files a training run writes (the train rule declares each of them)."""

    weights: Path  # model.pt: the weights and what predicting needs
    train_log: Path  # train_log.json: mean losses and lr per log interval
    run: Path  # run.json: the run record the leaderboard reads
    resolved_config: Path  # resolved_config.json: everything to trace and redo the run

    @classmethod
    def in_folder(cls, folder: Path) -> TrainOutputs:
        """The four files under their usual names in one folder."""
        return cls(folder / "model.pt", folder / "train_log.json", folder / "run.json",
                   folder / "resolved_config.json")


@dataclass
class TrainJob:
    """Everything one training run needs; the same job always gives the same run."""

    dataset: str
    model: str
    hp: dict  # resolved: `training`, the catalogue's model defaults, the user's overrides
    train_json: Path
    manifest: Path  # the chip manifest: its digest ties the run to its chips
    shards: list[Path]
    outputs: TrainOutputs
    threads: int = 1
    checkpoints: CheckpointStore | None = None
    checkpoint_every: int = 0  # iterations; 0 writes no checkpoint
    weights_file: Path | None = None  # the pretrained weights the hp ask for
    world_size: int | None = None  # processes; None: one per visible GPU (one on the CPU)
    input_digests: dict = field(default_factory=dict)
    selection_json: Path | None = None  # the split `eval_every` scores (chips of held-out scenes)


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
