"""Scoring a model on the selection split while it trains (`training.eval_every`).

Every `eval_every` iterations the lead process predicts the selection split's chips (a model
step, on the training device) with the weights that would be saved (the recipe's average where
it keeps one), and hands the detections to a scoring process (spawned, CPU only), which scores
them with COCO's metrics (nadir.protocols.coco) (chip level, AP and AP50) while training goes
on: the GPU never waits for the scoring. The best score so far decides which weights are
`best`; a CPU copy of the weights of each step whose score is pending is kept until it arrives
(at most `MAX_PENDING`). The selection split is carved from train by scene
(nadir.coco.files.carve_selection), so the split that picks the weights is never the one that
scores them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch

from nadir.core.errors import NadirError
from nadir.protocols.coco import coco_evaluation
from nadir.raster.band_stats import InputScaling
from nadir.train.data import ShardChips, category_labels

log = logging.getLogger(__name__)


def coco_detections(output: dict, category_of: dict[int, int]) -> list[dict]:
    """One image's model output as COCO detections: xywh boxes, category ids and scores rounded
    as evaluation rounds them, and the corners (`polygon`) of an oriented model's boxes.

    `category_of` maps model labels to category ids; label 0 is the background slot, which
    sigmoid heads (RetinaNet, FCOS) can still score, so labels outside it are dropped.
    """
    polygons = output["polygons"].tolist() if "polygons" in output else None
    found = []
    for i, (b, s, c) in enumerate(zip(output["boxes"].tolist(), output["scores"].tolist(),
                                      output["labels"].tolist(), strict=True)):
        if c not in category_of:
            continue
        found.append({"category_id": category_of[c],
                      "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2),
                               round(b[3] - b[1], 2)], "score": round(s, 5)})
        if polygons is not None:
            found[-1]["polygon"] = [round(v, 2) for v in polygons[i]]
    return found


@torch.no_grad()
def detections(model: torch.nn.Module, dataset: ShardChips, categories: list[dict],
               batch: int, device: torch.device, log_progress: bool = False) -> list[dict]:
    """COCO-format detections (image id, xywh, category id, score) of a model in eval mode."""
    category_of = {label: cid for cid, label in category_labels(categories).items()}
    results = []
    done = 0
    for items in dataset.in_order(batch):
        done += len(items)
        outputs = model(dataset.model_inputs([im for im, _ in items], device))
        for (_, target), out in zip(items, outputs, strict=True):
            results += [{"image_id": target["image_id"], **det}
                        for det in coco_detections(out, category_of)]
        if log_progress:
            log.info("predicted %d/%d chips", done, len(dataset))
    return results


# Scorings in flight at once: each holds a CPU copy of its step's weights until its score
# arrives. A scoring (COCO's matching on the CPU) that takes longer than `eval_every` steps
# makes the loop wait here rather than pile up copies.
MAX_PENDING = 2


@dataclass
class Scored:
    """One scoring's result: the step, its selection scores, the weights scored (on the CPU)
    and the seconds from handing over the detections to the score's arrival."""

    iteration: int
    scores: dict
    weights: dict
    seconds: float


@dataclass
class _Pending:
    iteration: int
    future: Future
    weights: dict
    began: float


class SelectionScorer:
    """Chip-level AP and AP50 on the selection split: `submit` predicts with the given weights
    on the device and hands the detections to the scoring process; `arrived` returns the
    scores in the order submitted, waiting only when asked to (or when `MAX_PENDING` are in
    flight). `close` ends the scoring process."""

    def __init__(self, selection_json: Path, shards: list[str], categories: list[dict],
                 batch: int, max_detections: int = 100, scaling: InputScaling | None = None):
        self.gt = json.loads(Path(selection_json).read_text())
        self.dataset = ShardChips(selection_json, shards, scaling=scaling)
        self.categories, self.batch, self.max_detections = categories, batch, max_detections
        self._pending: deque[_Pending] = deque()
        # spawn: a fork of a process that drives a GPU and runs reader threads is unsafe
        self._worker = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"))

    def submit(self, iteration: int, model: torch.nn.Module, device: torch.device,
               weights: dict | None = None) -> list[Scored]:
        """Predict the split with `weights` (None: the model's own; else the recipe's average
        of them) and hand the detections to the scoring process; returns the scores that had
        to arrive first to keep at most `MAX_PENDING` in flight."""
        waited = self.arrived(keep=MAX_PENDING - 1)
        was_training = model.training
        model.eval()
        try:
            with weights_loaded(model, weights):
                found = detections(model, self.dataset, self.categories, self.batch, device)
        finally:
            model.train(was_training)
        kept = {k: v.detach().to("cpu", copy=True)
                for k, v in (weights if weights is not None else model.state_dict()).items()}
        # The scoring process imports only the COCO scoring (nadir.protocols.coco), not torch.
        future = self._worker.submit(coco_evaluation, self.gt, found, self.max_detections,
                                     source="the selection split")
        self._pending.append(_Pending(iteration, future, kept, time.perf_counter()))
        return waited

    def arrived(self, keep: int | None = None) -> list[Scored]:
        """The scores that have arrived, oldest first; waits for the oldest while more than
        `keep` are in flight (`keep=0`: wait for all of them)."""
        scored = []
        while self._pending and ((keep is not None and len(self._pending) > keep)
                                 or self._pending[0].future.done()):
            pending = self._pending.popleft()
            try:
                metrics = pending.future.result()["metrics"]
            except BrokenProcessPool:
                raise NadirError("the selection split's scoring process ended unexpectedly "
                                 "(out of memory?); give the job more memory or set "
                                 "training.eval_every: 0") from None
            scores = {"selection_AP": metrics["AP"], "selection_AP50": metrics["AP50"]}
            scored.append(Scored(pending.iteration, scores, pending.weights,
                                 time.perf_counter() - pending.began))
        return scored

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def weights_loaded(model: torch.nn.Module, weights: dict | None) -> Iterator[None]:
    """`model` holding `weights` inside the block (None: its own), its own state restored bit
    for bit after."""
    if weights is None:
        yield
        return
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    try:
        yield
    finally:
        model.load_state_dict(saved)
