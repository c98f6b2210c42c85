"""Scene detections and index objects as each protocol's input, and the scores of the protocols
a dataset is evaluated under (`score_protocols`), for scene evaluation."""


from __future__ import annotations

import logging
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nadir.datasets.tables import Annotation

log = logging.getLogger(__name__)

PROTOCOLS = ("coco", "dota_task2", "dota_task1", "xview")
NOT_COMPUTED = "not computed"
# xView's image files are GeoTIFFs named <id>.tif; nadir's scene id is the name without it, and
# the scorer names prediction files after the image file.
XVIEW_IMAGE_SUFFIX = ".tif"


def _bounds(polygon: list[float]) -> list[float]:
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def protocol_objects(scenes: Sequence[str], annotations: dict[str, list[Annotation]]
                     ) -> list[dict]:
    """The objects of these scenes as the protocols take them: outlines as indexed (not
    clipped to the scene, as in the benchmarks' label files), with their bounds."""
    return [{"image": scene, "category": a.category, "polygon": a.polygon,
             "bbox": _bounds(a.polygon), "difficult": a.difficult}
            for scene in scenes for a in annotations.get(scene, [])]


def protocol_detections(detections: list[dict], images: list[dict],
                        categories: list[dict]) -> list[dict]:
    """COCO scene detections as the protocols take them: scene names, class names, boxes as
    [xmin, ymin, xmax, ymax], and the `polygon` of oriented models where there is one."""
    scene_of = {im["id"]: im["scene"] for im in images}
    name_of = {c["id"]: c["name"] for c in categories}
    out = []
    for d in detections:
        x, y, w, h = d["bbox"]
        row = {"image": scene_of[d["image_id"]], "category": name_of[d["category_id"]],
               "score": d["score"], "bbox": [x, y, x + w, y + h]}
        if "polygon" in d:
            row["polygon"] = d["polygon"]
        out.append(row)
    return out


def xview_type_ids(classes: Sequence[str]) -> dict[str, int | None]:
    """xView's type id of each class name (None for a name xView does not have, e.g. after
    `classes.merge`)."""
    from nadir.datasets.xview import CLASS_NAMES

    ids = {name: type_id for type_id, name in CLASS_NAMES.items()}
    return {name: ids.get(name) for name in classes}


def _score_dota(task: int, objects: list[dict], detections: list[dict], classes: list[str],
                folder: Path) -> dict:
    from nadir.protocols.dota import evaluate_dota, write_result_files

    if task == 1:
        missing = sum("polygon" not in d for d in detections)
        if missing == len(detections):
            return {"status": NOT_COMPUTED, "reason": (
                "task 1 scores oriented boxes, and no detection carries a polygon: the model "
                "predicts axis-aligned boxes only")}
        if missing:
            raise ValueError(f"dota_task1: {missing} of {len(detections)} detections lack a "
                             "polygon")
    result = {"status": "ok", **evaluate_dota(objects, detections, classes, task)}
    write_result_files(detections, classes, task, folder)
    return result


def _score_xview(objects: list[dict], detections: list[dict], classes: list[str],
                 scenes: list[str], folder: Path) -> dict:
    from nadir.protocols.xview import evaluate_xview, write_prediction_files

    type_ids = xview_type_ids(classes)
    result = {"status": "ok", **evaluate_xview(objects, detections, type_ids)}
    outside = sorted(name for name, type_id in type_ids.items() if type_id is None)
    if outside:
        result["classes_without_type_id"] = outside
        log.warning("xview: classes %s are not xView classes: scored, but in no class group "
                    "and left out of the prediction files", outside)
    write_prediction_files(
        [{**d, "image": d["image"] + XVIEW_IMAGE_SUFFIX} for d in detections],
        [scene + XVIEW_IMAGE_SUFFIX for scene in scenes], type_ids, folder)
    return result


def score_protocols(protocols: Sequence[str], objects: list[dict], detections: list[dict],
                    classes: list[str], scenes: list[str], submission: Path | None) -> dict:
    """Each benchmark protocol's numbers (`coco` is computed by the caller), and its submission
    files in the zip `submission` (one folder per protocol)."""
    from nadir.protocols.dota import TASKS

    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; choose from {list(PROTOCOLS)}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in protocols:
            if name in TASKS:
                results[name] = _score_dota(TASKS[name], objects, detections, classes,
                                            folder / name)
            elif name == "xview":
                results[name] = _score_xview(objects, detections, classes, scenes,
                                             folder / name)
            result = results.get(name)
            if result is None:
                continue
            if result["status"] == "ok":
                log.info("%s: mAP %s", name, result["map"])
            else:
                log.info("%s: %s (%s)", name, result["status"], result["reason"])
        if submission is not None:
            with zipfile.ZipFile(submission, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(folder.rglob("*.txt")):
                    archive.write(path, path.relative_to(folder).as_posix())
    return results
