"""Chip-level evaluation: the model's detections on the val chips, scored by COCO's metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nadir.protocols.coco import check_detections, coco_evaluation
from nadir.train import device_name, predict_chips

log = logging.getLogger(__name__)


def evaluate(coco_json: Path, predictions: list[dict], max_detections: int) -> dict:
    """Chip-level evaluation of predictions against a COCO split file."""
    gt = json.loads(Path(coco_json).read_text())
    check_detections(gt, predictions, coco_json)
    return {"level": "chip", **coco_evaluation(gt, predictions, max_detections,
                                               source=coco_json)}


def evaluate_model(weights: str | Path, val: str | Path, shards: list[str | Path],
                   settings: dict, predictions: str | Path, metrics: str | Path,
                   threads: int = 1) -> dict:
    """The evaluate job: the model's detections on every val chip (`settings`: the
    `evaluation` keys prediction uses), written to `predictions`, and their COCO metrics to
    `metrics`; returns the metrics."""
    found = predict_chips(Path(weights), Path(val), [str(p) for p in shards], settings,
                          threads)
    Path(predictions).write_text(json.dumps(found) + "\n")
    result = evaluate(Path(val), found, settings["max_detections"])
    result["device"] = device_name()  # what the cost table bills GPU-hours by
    Path(metrics).write_text(json.dumps(result, indent=1) + "\n")
    log.info("chip-level metrics: %s", json.dumps(result["metrics"]))
    return result
