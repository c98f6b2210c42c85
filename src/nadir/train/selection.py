"""Scoring a model on the selection split while it trains (`training.eval_every`).

Every `eval_every` iterations the lead process predicts the selection split's chips and
scores them with COCO's metrics (nadir.protocols.coco) (chip level, AP and AP50); the best score
so far decides which weights are `best`. The selection split is carved from train by scene
(nadir.coco.files.carve_selection), so the split that picks the weights is never the one that
scores them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

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


class SelectionScorer:
    """Chip-level AP and AP50 of the model on the selection split, and the best so far."""

    def __init__(self, selection_json: Path, shards: list[str], categories: list[dict],
                 batch: int, max_detections: int = 100, scaling: InputScaling | None = None):
        self.gt = json.loads(Path(selection_json).read_text())
        self.dataset = ShardChips(selection_json, shards, scaling=scaling)
        self.categories, self.batch, self.max_detections = categories, batch, max_detections

    def score(self, model: torch.nn.Module, device: torch.device) -> dict:
        was_training = model.training
        model.eval()
        try:
            found = detections(model, self.dataset, self.categories, self.batch, device)
        finally:
            model.train(was_training)
        metrics = coco_evaluation(self.gt, found, self.max_detections,
                                  source="the selection split")["metrics"]
        return {"selection_AP": metrics["AP"], "selection_AP50": metrics["AP50"]}
