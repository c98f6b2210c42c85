"""The evaluate stage: standard COCO box metrics on the val split (faster-coco-eval)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

METRIC_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                "AR1", "AR10", "ARmax", "AR_small", "AR_medium", "AR_large"]


def coco_metrics(gt: dict, detections: list[dict], max_detections: int = 100) -> dict:
    """The twelve COCO numbers; -1 where a size range has no objects.

    ARmax is the recall at `max_detections` per image (COCO's AR100 when that is 100).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if not gt["annotations"]:
        raise ValueError("the ground truth has no objects: nothing to evaluate against")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes(detections) if detections else COCO()
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats if detections else [0.0] * len(METRIC_NAMES)
    return {name: round(float(v), 6) for name, v in zip(METRIC_NAMES, stats, strict=False)}


def evaluate(coco_json: Path, predictions: list[dict], max_detections: int) -> dict:
    gt = json.loads(Path(coco_json).read_text())
    metrics = coco_metrics(gt, predictions, max_detections)
    return {"metrics": metrics, "images": len(gt["images"]),
            "objects": len(gt["annotations"]), "detections": len(predictions)}
