"""COCO's box metrics, per-class AP and precision-recall curves of a set of detections.

Numbers come from the COCO matching arrays (`eval["precision"]`, `eval["recall"]`), summarised
here rather than by the engines' own `summarize()`: pycocotools' summary hard-codes 100
detections for the headline AP and prints -1 when `max_detections` is anything else, and dense
overhead scenes need more than 100. faster-coco-eval is the engine; pycocotools computes the
same arrays and is kept as a cross-check (tests/test_evaluation.py, bench/coco_eval.py).

A class without ground-truth objects has no AP: COCO marks it -1 and leaves it out of the
mean. It is reported with `status: "no ground truth"`, `AP: null` and the number of detections
made for it (all false positives), never as a silent 0 or NaN.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from nadir.core.errors import InputError

log = logging.getLogger(__name__)

METRIC_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                "AR1", "AR10", "ARmax", "AR_small", "AR_medium", "AR_large"]
ENGINES = ("faster-coco-eval", "pycocotools")
NO_GROUND_TRUTH = "no ground truth"
PR_IOU = 0.5  # the IoU threshold of the precision-recall curves in the report


def check_detections(gt: dict, detections: list[dict], source: str | Path) -> None:
    """Raise InputError for the first detection that names an unknown image or category."""
    image_ids = {im["id"] for im in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    for i, det in enumerate(detections):
        missing = {"image_id", "category_id", "bbox", "score"} - det.keys()
        if missing:
            raise InputError(source, f"detection {i} lacks {sorted(missing)}: {det}")
        if det["image_id"] not in image_ids:
            raise InputError(source, f"detection {i} names image {det['image_id']}, which is "
                             "not in the ground truth")
        if det["category_id"] not in category_ids:
            raise InputError(source, f"detection {i} names category {det['category_id']}; "
                             f"the ground truth has {sorted(category_ids)}")
        if len(det["bbox"]) != 4:
            raise InputError(source, f"detection {i}: bbox must be [x, y, width, height], "
                             f"got {det['bbox']}")
        # An oriented model's outline, scored by DOTA's task 1 (nadir.protocols.dota).
        if "polygon" in det and len(det["polygon"]) != 8:
            raise InputError(source, f"detection {i}: polygon must be the four corners "
                             f"[x1, y1, x2, y2, x3, y3, x4, y4], got {det['polygon']}")


def run_cocoeval(gt: dict, detections: list[dict], max_detections: int,
                 engine: str = "faster-coco-eval"):
    """Match detections to ground truth with one engine; return its evaluator after accumulate."""
    # Both engines write into the dicts they are given (ids, areas): give them copies.
    gt = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
    detections = [dict(d) for d in detections]
    with contextlib.redirect_stdout(io.StringIO()):
        if engine == "faster-coco-eval":
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval

            coco_gt = COCO(gt)
        elif engine == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
        else:
            raise ValueError(f"unknown COCO engine {engine!r}; choose one of {ENGINES}")
        coco_dt = coco_gt.loadRes(detections) if detections else COCO()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def summarise(evaluator) -> dict:
    """The twelve COCO numbers from the matching arrays; -1 where a size range has no objects."""
    precision = evaluator.eval["precision"]  # [IoU, recall, class, area, maxDets]
    recall = evaluator.eval["recall"]  # [IoU, class, area, maxDets]
    iou = list(np.round(evaluator.params.iouThrs, 2))
    at50, at75 = iou.index(0.5), iou.index(0.75)
    values = [
        _mean_valid(precision[:, :, :, 0, -1]),
        _mean_valid(precision[at50, :, :, 0, -1]),
        _mean_valid(precision[at75, :, :, 0, -1]),
        *(_mean_valid(precision[:, :, :, area, -1]) for area in (1, 2, 3)),
        *(_mean_valid(recall[:, :, 0, m]) for m in (0, 1, 2)),
        *(_mean_valid(recall[:, :, area, -1]) for area in (1, 2, 3)),
    ]
    return {name: round(v, 6) for name, v in zip(METRIC_NAMES, values, strict=True)}


def per_class(evaluator, gt: dict, detections: list[dict]) -> list[dict]:
    """AP and AP50 of each class, with its object and detection counts."""
    precision = evaluator.eval["precision"]
    iou = list(np.round(evaluator.params.iouThrs, 2))
    at50 = iou.index(0.5)
    objects = Counter(a["category_id"] for a in gt["annotations"])
    detected = Counter(d["category_id"] for d in detections)
    rows = []
    for k, cat_id in enumerate(evaluator.params.catIds):
        name = next(c["name"] for c in gt["categories"] if c["id"] == cat_id)
        row = {"id": int(cat_id), "name": name, "objects": objects.get(cat_id, 0),
               "detections": detected.get(cat_id, 0)}
        if row["objects"] == 0:
            row |= {"status": NO_GROUND_TRUTH, "AP": None, "AP50": None}
        else:
            row |= {"status": "ok",
                    "AP": round(_mean_valid(precision[:, :, k, 0, -1]), 6),
                    "AP50": round(_mean_valid(precision[at50, :, k, 0, -1]), 6)}
        rows.append(row)
    return rows


def pr_curves(evaluator, gt: dict) -> dict:
    """Precision at each of COCO's 101 recall points, per class, at IoU PR_IOU (all sizes)."""
    precision = evaluator.eval["precision"]
    iou = list(np.round(evaluator.params.iouThrs, 2))
    curve_at = iou.index(PR_IOU)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    curves = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[curve_at, :, k, 0, -1]
        # -1 throughout means the class has no ground truth: there is no curve to draw.
        curves[names[cat_id]] = None if (values <= -1).all() else [round(float(v), 6)
                                                                    for v in values]
    return {"iou": PR_IOU, "recall": [round(float(r), 2) for r in evaluator.params.recThrs],
            "precision": curves}


def coco_evaluation(gt: dict, detections: list[dict], max_detections: int,
                    engine: str = "faster-coco-eval", source: str | Path = "ground truth") -> dict:
    """Everything the leaderboard and report need from one set of detections."""
    if not gt["annotations"]:
        raise InputError(source, "the ground truth has no objects: there is nothing to "
                         "evaluate against (check the val split and the chipping settings)")
    evaluator = run_cocoeval(gt, detections, max_detections, engine)
    classes = per_class(evaluator, gt, detections)
    for row in classes:
        if row["status"] == NO_GROUND_TRUTH:
            log.warning("class %r has no ground-truth objects in %s: no AP (%d detections of "
                        "it are all false positives)", row["name"], source, row["detections"])
    return {"metrics": summarise(evaluator), "per_class": classes,
            "pr_curve": pr_curves(evaluator, gt), "max_detections": max_detections,
            "images": len(gt["images"]), "objects": len(gt["annotations"]),
            "detections": len(detections)}
