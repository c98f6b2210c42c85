"""Chip-level evaluation in two jobs, so that a GPU pod runs only the model: `predict_val_chips`
(the evaluate job, on a GPU) writes the model's detections on every val chip and the device it
ran on; `score_chip_files` (the evaluate_chips job, on a CPU) scores them by COCO's metrics."""

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


def predict_val_chips(weights: str | Path, val: str | Path, shards: list[str | Path],
                      settings: dict, predictions: str | Path, record: str | Path,
                      threads: int = 1) -> None:
    """The evaluate job: the model's detections on every val chip (`settings`: the `evaluation`
    keys prediction uses) written to `predictions`, and to `record` the device they were made
    on (what the cost table bills GPU-hours by, and chip metrics carry)."""
    found = predict_chips(Path(weights), Path(val), [str(p) for p in shards], settings,
                          threads)
    Path(predictions).write_text(json.dumps(found) + "\n")
    Path(record).write_text(json.dumps({"device": device_name(), "detections": len(found)},
                                       indent=1) + "\n")
    log.info("%d detections on the val chips of %s", len(found), val)


def score_chip_files(predictions: str | Path, record: str | Path, val: str | Path,
                     max_detections: int, metrics: str | Path) -> dict:
    """The evaluate_chips job: the COCO metrics of the evaluate job's detections, with the
    device they were made on, written to `metrics`; returns them."""
    result = evaluate(Path(val), json.loads(Path(predictions).read_text()), max_detections)
    result["device"] = json.loads(Path(record).read_text())["device"]
    Path(metrics).write_text(json.dumps(result, indent=1) + "\n")
    log.info("chip-level metrics: %s", json.dumps(result["metrics"]))
    return result
