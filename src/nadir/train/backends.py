"""The training job, the one interface every training backend implements, and the registry.

A backend trains a catalogue model on a COCO split read from the chip shards, resumes from the
newest matching checkpoint, predicts COCO detections, and describes a run completely (the
resolved config saved beside the weights). Backends are found by name and imported only when
used (`get_backend`): a backend's module imports its framework (torch, detectron2,
transformers...), so naming one costs nothing until it trains; a new backend is one line here,
its module and one catalogue entry. torchvision, transformers and yolox models share one
training loop (`nadir.train.loop`); detectron2 has its own adapter (`nadir.train.detectron2`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nadir.config.catalogue import entry
from nadir.raster.band_stats import InputScaling
from nadir.raster.chip_params import ChipParams
from nadir.train.checkpoints import CheckpointStore

if TYPE_CHECKING:
    from nadir.train.recipes import TrainingPlan

# Backend name -> the module whose `backend(name)` makes it.
BACKENDS = {
    "torchvision": "nadir.train.loop",
    "transformers": "nadir.train.loop",
    "yolox": "nadir.train.loop",
    "detectron2": "nadir.train.detectron2",
}


@dataclass(frozen=True)
class TrainOutputs:
    """The files a training run writes (the train rule declares each of them)."""

    weights: Path  # model.pt: the weights and what predicting needs (its chip parameters)
    train_log: Path  # train_log.json: mean losses and lr per log interval
    run: Path  # run.json: the run record the leaderboard reads
    resolved_config: Path  # resolved_config.json: everything to trace and redo the run


@dataclass
class TrainJob:
    """Everything one training run needs; the same job always gives the same run."""

    dataset: str
    model: str
    hp: dict  # resolved: `training`, the catalogue's model defaults, the user's overrides
    train_json: Path
    manifest: Path  # the chip manifest: its digest ties the run to its chips
    shards: list[str]  # local paths or s3:// URLs: read where they are
    outputs: TrainOutputs
    threads: int = 1
    checkpoints: CheckpointStore | None = None
    checkpoint_every: int = 0  # iterations; 0 writes no checkpoint
    weights_file: Path | None = None  # the pretrained weights the hp ask for
    world_size: int | None = None  # processes; None: one per visible GPU (one on the CPU)
    input_digests: dict = field(default_factory=dict)
    selection_json: Path | None = None  # the split `eval_every` scores (chips of held-out scenes)
    plan: TrainingPlan | None = None  # the recipe's numbers, planned once by the runner

    def training_plan(self, chips: int, global_batch: int) -> TrainingPlan:
        """The run's plan (`nadir.train.recipes.training_plan`): the runner's, which run.json
        records; a job made without one (a backend called directly) is planned here from
        `chips` and `global_batch`."""
        if self.plan is not None:
            return self.plan
        from nadir.train.recipes import training_plan

        return training_plan(self.model, self.hp, chips, global_batch)

    @property
    def chip_params(self) -> ChipParams:
        """How the chips were cut (the chip manifest's record): the model is built for their
        size and saves all of it in model.pt, for inference to cut the same windows."""
        return ChipParams.of_manifest(self.manifest)

    @property
    def input_scaling(self) -> InputScaling:
        """How chip values become model input: from the train chips' per-band statistics that
        the chip manifest holds (`nadir.raster.band_stats`)."""
        import json

        chips = self.chip_params
        stats = json.loads(Path(self.manifest).read_text()).get("band_stats")
        return InputScaling.of_stats(stats, chips.model_bands, chips.stretch_percentiles)


class Backend(Protocol):
    name: str

    def train(self, job: TrainJob) -> dict:
        """Train (resuming when a checkpoint matches); write model.pt and train_log.json."""

    def processes(self, job: TrainJob) -> int:
        """Processes the job trains in (its global batch is batch_size times this)."""

    def resume(self, job: TrainJob) -> dict | None:
        """The newest checkpoint's state for this job, or None to start from iteration 0."""

    def predict(self, weights: Path, coco_json: Path, shards: list[str], hp: dict,
                threads: int = 1) -> list[dict]:
        """COCO detections (xywh, category id, score) for every image of a split."""

    def resolved_config(self, job: TrainJob) -> dict:
        """Everything needed to trace and redo the run."""


def get_backend(name: str) -> Backend:
    """A new instance of the backend called `name`."""
    if name not in BACKENDS:
        raise KeyError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).backend(name)


def backend_of_weights(weights: Path) -> Backend:
    """The backend that trained a `model.pt` (every backend saves its catalogue name in it)."""
    from nadir.train.weights import read_weights

    saved = read_weights(weights, mmap=True)
    return get_backend(entry(saved["model"]).backend)


def saved_chip_params(saved: dict, weights: Path) -> ChipParams:
    """The chip parameters a model.pt carries (the chips it learnt from)."""
    return ChipParams.from_record(saved.get("chipping"), weights)


def saved_input_scaling(saved: dict, weights: Path) -> InputScaling:
    """How the model.pt's model scales chip values (saved by training; 8-bit before then)."""
    chips = saved_chip_params(saved, weights)
    return InputScaling.from_record(saved.get("input", {}).get("scaling"), chips.model_bands)
