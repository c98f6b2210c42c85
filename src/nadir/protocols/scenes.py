"""Detections of windows merged into whole scenes, and the ground truth of whole scenes.

Window (chip) detections are shifted by their window's offset (`x`, `y`) into scene pixels and
clipped to the scene (windows of small scenes are padded). Neighbouring windows overlap, so one
object seen by two gives two detections: class-wise non-maximum suppression at `nms_iou` merges
them (the DOTA devkit's merge uses 0.3). Scene-level evaluation and inference merge with these
same functions, so a val scene's inference output is what scene-level evaluation scored.
Detections of an oriented model also carry their corners (`polygon`): those are shifted into
the scene unclipped, and the merge compares them by polygon IoU (rotated NMS).
"""

from __future__ import annotations

from pathlib import Path

from nadir.core.errors import InputError
from nadir.core.geometry import box_nms, polygon_area, rotated_nms, shift_polygon
from nadir.datasets.tables import read_annotations, read_scenes


def scene_images(scenes_csv: Path, split: str) -> list[dict]:
    """One COCO image per scene of the split, ids from 1 in scene-table order."""
    rows = [s for s in read_scenes(Path(scenes_csv)) if s["split"] == split]
    if not rows:
        raise InputError(scenes_csv, f"no scene of split {split!r}: nothing to evaluate")
    return [{"id": i, "scene": s["scene"], "width": s["width"], "height": s["height"],
             "file_name": s["scene"]} for i, s in enumerate(rows, start=1)]


def scene_ground_truth(images: list[dict], annotations_csv: Path,
                       categories: list[dict]) -> dict:
    """COCO ground truth of whole scenes: every indexed object, boxed by its polygon's bounds."""
    by_name = {c["name"]: c["id"] for c in categories}
    annotations = read_annotations(Path(annotations_csv))
    gt = {"images": images, "categories": categories, "annotations": []}
    for image in images:
        for ann in annotations.get(image["scene"], []):
            if ann.category not in by_name:
                raise InputError(annotations_csv, f"scene {ann.scene} object {ann.object}: "
                                 f"category {ann.category!r} is not one of {sorted(by_name)}")
            xs, ys = ann.polygon[0::2], ann.polygon[1::2]
            x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
            x1, y1 = min(float(image["width"]), max(xs)), min(float(image["height"]), max(ys))
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": image["id"],
                "category_id": by_name[ann.category],
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round(polygon_area(ann.polygon), 2), "iscrowd": 0,
                "difficult": ann.difficult,
            })
    return gt


def to_scene_coordinates(chip_detections: list[dict], chips: dict,
                         images: list[dict]) -> tuple[list[dict], int]:
    """Shift chip detections into their scenes and clip them to the scene.

    Returns the scene detections (image ids of `images`) and how many became empty by clipping
    (boxes entirely in a padded margin), which are dropped.
    """
    by_scene = {im["scene"]: im for im in images}
    chip_by_id = {im["id"]: im for im in chips["images"]}
    out, emptied = [], 0
    for det in chip_detections:
        chip = chip_by_id[det["image_id"]]
        scene = by_scene[chip["scene"]]
        x, y, w, h = det["bbox"]
        x0, y0 = max(0.0, x + chip["x"]), max(0.0, y + chip["y"])
        x1 = min(float(scene["width"]), x + w + chip["x"])
        y1 = min(float(scene["height"]), y + h + chip["y"])
        if x1 <= x0 or y1 <= y0:
            emptied += 1
            continue
        out.append({"image_id": scene["id"], "category_id": det["category_id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "score": det["score"]})
        if "polygon" in det:  # oriented: corners shifted, not clipped (DOTA's are not either)
            out[-1]["polygon"] = shift_polygon(det["polygon"], chip["x"], chip["y"])
    return out, emptied


def merge_overlaps(detections: list[dict], nms_iou: float) -> list[dict]:
    """Class-wise NMS within each scene: of detections of one class in one scene overlapping by
    more than `nms_iou` (IoU), only the highest-scoring one is kept.

    Detections of an oriented model (all carrying `polygon`) are compared by polygon IoU;
    the others by the IoU of their axis-aligned boxes.
    """
    if not detections:
        return []
    oriented = sum("polygon" in d for d in detections)
    if oriented:
        if oriented != len(detections):
            raise ValueError(f"{oriented} of {len(detections)} detections carry a polygon: "
                             "one model's detections are all oriented or none")
        return _merge_polygons(detections, nms_iou)
    keep = box_nms([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],
                     d["bbox"][1] + d["bbox"][3]] for d in detections],
                   [d["score"] for d in detections], _nms_groups(detections), nms_iou)
    return [{**detections[i], "bbox": [round(v, 2) for v in detections[i]["bbox"]]}
            for i in keep]


def _nms_groups(detections: list[dict]) -> list[int]:
    """One NMS group per (scene, class): detections of different groups never suppress each
    other."""
    groups = {key: i for i, key in enumerate(sorted({(d["image_id"], d["category_id"])
                                                      for d in detections}))}
    return [groups[(d["image_id"], d["category_id"])] for d in detections]


def _merge_polygons(detections: list[dict], nms_iou: float) -> list[dict]:
    keep = rotated_nms([d["polygon"] for d in detections], [d["score"] for d in detections],
                       _nms_groups(detections), nms_iou)
    return [{**detections[i], "bbox": [round(v, 2) for v in detections[i]["bbox"]],
             "polygon": [round(v, 2) for v in detections[i]["polygon"]]} for i in keep]
