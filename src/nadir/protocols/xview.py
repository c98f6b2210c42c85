"""xView's official protocol (the xView 2018 challenge scorer, DIUx-xView/xView1_baseline
`scoring/score.py`), computed to give its numbers (tests/test_protocols.py checks them against
fixtures the scorer produced).

Per class present in the ground truth:
- per image, the class's detections in descending score order are matched greedily: each takes
  its best-overlapping object of the class (IoU without the +1 pixel, taken objects included);
  it is a true positive if that IoU is at least 0.5 and the object is still free, else a false
  positive;
- the scorer counts an image's objects of a class as positives only when the image has at
  least one detection of that class: objects of a class nobody detected in an image are not
  misses. nadir reproduces this, because it defines the published numbers, and records both
  counts per class (`objects`, `objects_counted`);
- AP is VOC's all-point interpolation over the class's detections ranked by score across
  images; a class whose counted objects are 0 has AP 0 (and no precision or recall);
- `map` is the mean AP over the classes present; `map_small` ... `map_rare` the mean over the
  present classes of xView's fixed class groups (by type id; null when none is present);
  `precision` and `recall` are the mean over classes of true positives / detections and true
  positives / counted objects; `f1` combines those two means.

Detections with a score of 0 are dropped, as the scorer drops them. The scorer fails when no
prediction file exists; nadir writes one per image (empty when the image has no detection), so
that case cannot arise, and `evaluate_xview` with no detections at all gives AP 0 everywhere.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from nadir.protocols.ap import all_point_ap

IOU_THRESHOLD = 0.5
# Class groups of the scorer's summary, by xView type id.
GROUPS = {
    "small": [17, 18, 19, 20, 21, 23, 24, 26, 27, 28, 32, 41, 60, 62, 63, 64, 65, 66, 91],
    "medium": [11, 12, 15, 25, 29, 33, 34, 35, 36, 37, 38, 42, 44, 47, 50, 53, 56, 59, 61, 71,
               72, 73, 76, 84, 86, 93, 94],
    "large": [13, 40, 45, 49, 51, 52, 54, 55, 57, 74, 77, 79, 83, 89],
    "common": [13, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28, 34, 35, 41, 47, 60, 63, 64, 71,
               72, 73, 76, 77, 79, 83, 86, 89, 91],
    "rare": [11, 12, 15, 29, 32, 33, 36, 37, 38, 40, 42, 44, 45, 49, 50, 51, 52, 53, 54, 55, 56,
             57, 59, 61, 62, 65, 66, 74, 84, 93, 94],
}
# Type ids the scorer never scores, even when present in the ground truth.
IGNORED_TYPE_IDS = (75, 82, 87)


def _iou_matrix(detections: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """IoU of every [xmin, ymin, xmax, ymax] detection (rows) with every object (columns)."""
    iw = (np.minimum(detections[:, None, 2], objects[None, :, 2])
          - np.maximum(detections[:, None, 0], objects[None, :, 0])).clip(min=0)
    ih = (np.minimum(detections[:, None, 3], objects[None, :, 3])
          - np.maximum(detections[:, None, 1], objects[None, :, 1])).clip(min=0)
    inter = iw * ih
    area_d = (detections[:, 2] - detections[:, 0]) * (detections[:, 3] - detections[:, 1])
    area_o = (objects[:, 2] - objects[:, 0]) * (objects[:, 3] - objects[:, 1])
    return inter / (area_d[:, None] + area_o[None, :] - inter)


def _match_image(detections: list[dict], objects: list[dict]) -> tuple[list[float], list[bool]]:
    """Scores (descending) and true-positive flags of one image's detections of one class."""
    scores = np.array([d["score"] for d in detections], dtype=np.float64)
    # The scorer's order: numpy's default argsort, reversed (equal scores: later lines first).
    order = np.argsort(scores)[::-1]
    matched = [False] * len(detections)
    if objects:
        iou = _iou_matrix(np.array([detections[i]["bbox"] for i in order], dtype=np.float64),
                          np.array([o["bbox"] for o in objects], dtype=np.float64))
        taken = [False] * len(objects)
        for rank, best in enumerate(np.argmax(iou, axis=1)):
            if iou[rank, best] >= IOU_THRESHOLD and not taken[best]:
                taken[best] = matched[rank] = True
    return scores[order].tolist(), matched


def _nanmean(values: list[float]) -> float | None:
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if valid else None


def evaluate_xview(objects: list[dict], detections: list[dict],
                   type_ids: dict[str, int | None]) -> dict:
    """xView per-class AP, group mAPs, precision, recall and F1.

    objects: {"image", "category", "bbox" [xmin, ymin, xmax, ymax]}; detections: the same with
    "score". `type_ids` maps each class name to its xView type id (None for a class outside
    xView's list: scored, but in no group). Every image of `objects` and `detections` counts as
    one with a prediction file.
    """
    objects_by = defaultdict(list)
    for o in objects:
        objects_by[o["category"], o["image"]].append(o)
    detections_by = defaultdict(list)
    for d in detections:
        if d["score"] > 0:
            detections_by[d["category"], d["image"]].append(d)
    present = [name for name, type_id in type_ids.items()
               if type_id not in IGNORED_TYPE_IDS and any(o["category"] == name for o in objects)]
    per_class, ap_by_type = [], {}
    eps = np.spacing(1)
    for name in present:
        scores, matched, counted = [], [], 0
        images = sorted({image for (category, image) in [*objects_by, *detections_by]
                         if category == name})
        for image in images:
            image_detections = detections_by.get((name, image), [])
            if not image_detections:
                continue  # the scorer's quirk: these objects are not counted
            image_objects = objects_by.get((name, image), [])
            s, m = _match_image(image_detections, image_objects)
            scores += s
            matched += m
            counted += len(image_objects)
        row = {"name": name, "type_id": type_ids[name],
               "objects": sum(len(v) for (c, _), v in objects_by.items() if c == name),
               "objects_counted": counted, "detections": len(scores),
               "true_positives": int(sum(matched))}
        if counted == 0:
            row |= {"AP": 0.0, "precision": None, "recall": None}
        else:
            ranked = np.array(matched, dtype=np.float64)[np.argsort(scores)[::-1]]
            tp = np.cumsum(ranked)
            fp = np.cumsum(1.0 - ranked)
            ap = all_point_ap(tp / (tp + fp + eps), tp / counted)
            row |= {"AP": ap, "precision": sum(matched) / len(matched),
                    "recall": sum(matched) / counted}
        per_class.append(row)
        if type_ids[name] is not None:
            ap_by_type[type_ids[name]] = row["AP"]
    precision = _nanmean([r["precision"] for r in per_class if r["precision"] is not None])
    recall = _nanmean([r["recall"] for r in per_class if r["recall"] is not None])
    f1 = (None if precision is None else
          2 / (1 / (eps + precision) + 1 / (eps + recall)))
    result = {"iou_threshold": IOU_THRESHOLD, "interpolation": "voc all-point",
              "map": _nanmean([r["AP"] for r in per_class]),
              **{f"map_{group}": _nanmean([ap_by_type[t] for t in ids if t in ap_by_type])
                 for group, ids in GROUPS.items()},
              "precision": precision, "recall": recall, "f1": f1,
              "classes_present": len(per_class)}
    rounded = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}
    return {**rounded, "per_class": [
        {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
        for r in per_class]}


def write_prediction_files(detections: list[dict], images: list[str],
                           type_ids: dict[str, int | None], folder: Path) -> list[Path]:
    """The scorer's input: one `<image>.txt` per image (empty without detections), lines
    `xmin ymin xmax ymax type_id score`. Classes without an xView type id cannot be written
    and are left out."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {image: [] for image in images}
    for d in detections:
        type_id = type_ids.get(d["category"])
        if type_id is not None:
            box = " ".join(repr(float(v)) for v in d["bbox"])
            lines[d["image"]].append(f"{box} {type_id} {float(d['score'])!r}\n")
    paths = []
    for image in images:
        path = folder / f"{image}.txt"
        path.write_text("".join(lines[image]))
        paths.append(path)
    return paths
