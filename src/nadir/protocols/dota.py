"""DOTA's official protocol: task 1 (oriented boxes) and task 2 (horizontal boxes).

Written to give the numbers of DOTA_devkit's `dota_evaluation_task1.py` / `task2.py` (checked
against them in tests/test_protocols.py on fixtures that the devkit produced). Per class:

- objects marked difficult are not positives; a detection whose best match is a difficult
  object is neither a true nor a false positive;
- detections are taken in descending score order; each is compared with every object of its
  class in its image (taken ones included), and only its best-overlapping object counts: if that
  IoU is strictly above 0.5 and the object is free, it is a true positive, if the object is
  already taken, a false positive (even when another free object overlaps enough);
- task 2 IoU counts pixels inclusively (a box from x 10 to 20 is 11 px wide) and reads the
  ground-truth bounds as integers (the devkit truncates them with int()); detections keep their
  decimals. Task 1 IoU is the exact IoU of the two four-corner outlines;
- AP is VOC07's 11-point interpolation; mAP is the mean over the classes given (the version's
  classes), where a class without ground truth scores 0, as in the devkit.

Where the devkit crashes, this module gives a defined result: a class without detections (the
devkit fails on an empty result file) has AP 0; a class without ground truth has AP 0 (the
devkit's result when it has detections; it fails when it has none).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon

from nadir.protocols.ap import precision_recall, voc07_ap

TASKS = {"dota_task1": 1, "dota_task2": 2}
IOU_THRESHOLD = 0.5
NO_GROUND_TRUTH = "no ground truth"


def _ground_truth_box(polygon: list[float]) -> list[int]:
    """Task 2 ground truth: the outline's bounds, truncated to integers as the devkit reads them."""
    xs, ys = polygon[0::2], polygon[1::2]
    return [math.trunc(min(xs)), math.trunc(min(ys)), math.trunc(max(xs)), math.trunc(max(ys))]


def _inclusive_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [xmin, ymin, xmax, ymax] box with many, counting pixels inclusively (+1)."""
    iw = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
             + (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0) - inter)
    return inter / union


def outline(polygon: list[float]) -> Polygon:
    """The four-corner outline as a shapely polygon (corner order either way round)."""
    return Polygon(list(zip(polygon[0::2], polygon[1::2], strict=True)))


def _polygon_iou(outline_: Polygon, outlines: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Exact IoU of one outline with many (the devkit's polyiou does the same arithmetic);
    only outlines whose bounds meet this one's are intersected, the others have IoU 0."""
    x0, y0, x1, y1 = outline_.bounds
    near = np.flatnonzero((bounds[:, 0] <= x1) & (bounds[:, 2] >= x0)
                          & (bounds[:, 1] <= y1) & (bounds[:, 3] >= y0))
    iou = np.zeros(len(outlines))
    inter = shapely.area(shapely.intersection(outlines[near], outline_))
    iou[near] = inter / (shapely.area(outlines[near]) + outline_.area - inter)
    return iou


class _ClassObjects:
    """One class's objects in one image, in the form the task's IoU needs."""

    def __init__(self, objects: list[dict], task: int):
        self.difficult = [bool(o["difficult"]) for o in objects]
        self.taken = [False] * len(objects)
        if task == 2:
            self.shapes = np.array([_ground_truth_box(o["polygon"]) for o in objects],
                                   dtype=np.float64)
        else:
            self.shapes = np.array([outline(o["polygon"]) for o in objects], dtype=object)
            self.bounds = shapely.bounds(self.shapes)

    def overlaps(self, detection: dict, task: int) -> np.ndarray:
        if task == 2:
            return _inclusive_iou(np.asarray(detection["bbox"], dtype=np.float64), self.shapes)
        return _polygon_iou(outline(detection["polygon"]), self.shapes, self.bounds)


def class_ap(objects: list[dict], detections: list[dict], task: int) -> dict:
    """AP of one class: `objects` and `detections` are that class's, across all images."""
    by_image: dict[str, list[dict]] = defaultdict(list)
    for obj in objects:
        by_image[obj["image"]].append(obj)
    ground_truth = {image: _ClassObjects(objs, task) for image, objs in by_image.items()}
    positives = sum(not o["difficult"] for o in objects)
    scores = np.array([d["score"] for d in detections], dtype=np.float64)
    # numpy's default argsort, as in the devkit, so that equal scores rank the same way.
    order = np.argsort(-scores)
    true_positive = np.zeros(len(detections))
    false_positive = np.zeros(len(detections))
    for rank, d in enumerate(order):
        detection = detections[d]
        image = ground_truth.get(detection["image"])
        if image is None:
            false_positive[rank] = 1
            continue
        iou = image.overlaps(detection, task)
        best = int(np.argmax(iou))
        if not iou[best] > IOU_THRESHOLD:
            false_positive[rank] = 1
        elif image.difficult[best]:
            continue
        elif image.taken[best]:
            false_positive[rank] = 1
        else:
            image.taken[best] = True
            true_positive[rank] = 1
    result = {"objects": positives, "difficult": len(objects) - positives,
              "detections": len(detections), "true_positives": int(true_positive.sum()),
              "false_positives": int(false_positive.sum())}
    if positives == 0:
        return {**result, "status": NO_GROUND_TRUTH, "AP": 0.0}
    precision, recall = precision_recall(true_positive, false_positive, positives)
    return {**result, "status": "ok", "AP": voc07_ap(precision, recall)}


def evaluate_dota(objects: list[dict], detections: list[dict], classes: list[str],
                  task: int) -> dict:
    """Per-class AP and mAP of one DOTA task.

    objects: {"image", "category", "polygon" (x1 y1 ... x4 y4), "difficult"} per object;
    detections: {"image", "category", "score"} with "bbox" [xmin, ymin, xmax, ymax] (task 2)
    or "polygon" (task 1). Detections of classes not in `classes` are ignored, as the devkit
    reads only its classes' result files.
    """
    if task not in (1, 2):
        raise ValueError(f"DOTA has tasks 1 and 2, not {task!r}")
    per_class = []
    for name in classes:
        row = class_ap([o for o in objects if o["category"] == name],
                       [d for d in detections if d["category"] == name], task)
        per_class.append({"name": name, **row})
    mean = sum(r["AP"] for r in per_class) / len(per_class) if per_class else 0.0
    for row in per_class:
        row["AP"] = round(row["AP"], 6)
    return {"task": task, "iou_threshold": IOU_THRESHOLD, "interpolation": "voc07 11-point",
            "map": round(mean, 6), "classes": len(classes),
            "classes_without_ground_truth": [r["name"] for r in per_class
                                             if r["status"] == NO_GROUND_TRUTH],
            "per_class": per_class}


def result_file_name(task: int, name: str) -> str:
    return f"Task{task}_{name}.txt"


def write_result_files(detections: list[dict], classes: list[str], task: int,
                       folder: Path) -> list[Path]:
    """DOTA's submission files: one `Task<task>_<class>.txt` per class (empty when the class has
    no detection), lines `image score x1 y1 x2 y2 x3 y3 x4 y4` (task 1) or
    `image score xmin ymin xmax ymax` (task 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {name: [] for name in classes}
    key = "polygon" if task == 1 else "bbox"
    for d in detections:
        if d["category"] in lines:
            values = " ".join(repr(float(v)) for v in d[key])
            lines[d["category"]].append(f"{d['image']} {float(d['score'])!r} {values}\n")
    paths = []
    for name in classes:
        path = folder / result_file_name(task, name)
        path.write_text("".join(lines[name]))
        paths.append(path)
    return paths
