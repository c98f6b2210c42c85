"""Scene-level evaluation, as the DOTA protocol does it: chips back into whole scenes.

A model sees chips, but a user wants objects found in scenes. Chip detections are merged into
their scenes (`nadir.protocols.scenes`: shifted by their chip's offset, clipped, class-wise NMS
at `nms_iou`, as the DOTA devkit's merge). What remains is scored with the same COCO metrics
against every object of every val scene, from the index tables (scenes.csv, annotations.csv).
Objects no chip kept (cut below `min_visible`, or in skipped chips) therefore count as misses
here, and not at chip level.

COCO boxes are axis-aligned (the bounds of each annotated polygon), like the chip-level ones,
and difficult objects count like any other, so the two COCO levels differ only by the merge.
Detections of an oriented model also carry their corners (`polygon`): those are shifted into
the scene unclipped, and the merge compares them by polygon IoU (rotated NMS) instead of their
boxes. The benchmark protocols (nadir.protocols: DOTA's tasks, xView's scorer) score the same
merged detections by their own rules, difficult objects and oriented outlines included.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from nadir.core.errors import InputError
from nadir.datasets.tables import read_annotations
from nadir.protocols import protocol_detections, protocol_objects, score_protocols
from nadir.protocols.coco import check_detections, coco_evaluation
from nadir.protocols.scenes import (
    merge_overlaps,
    scene_ground_truth,
    scene_images,
    to_scene_coordinates,
)

log = logging.getLogger(__name__)


def evaluate_scenes(chip_predictions: list[dict], predictions_path: Path, val_json: Path,
                    scenes_csv: Path, annotations_csv: Path, nms_iou: float,
                    max_detections: int, protocols: Sequence[str] = ("coco",),
                    submission: Path | None = None) -> tuple[dict, dict]:
    """Return (scene detections file content, scene-level metrics).

    COCO's numbers are always computed (they rank the leaderboard); the benchmark `protocols`
    (nadir.protocols) add theirs under `protocols` and write their submission files into the
    zip `submission`.
    """
    chips = json.loads(Path(val_json).read_text())
    check_detections(chips, chip_predictions, predictions_path)
    images = scene_images(scenes_csv, "val")
    unknown = sorted({im["scene"] for im in chips["images"]} - {im["scene"] for im in images})
    if unknown:
        raise InputError(val_json, f"chips of scenes {unknown[:5]} are not val scenes in "
                         f"{scenes_csv}: the COCO file and the index disagree")
    scene_dets, emptied = to_scene_coordinates(chip_predictions, chips, images)
    merged = merge_overlaps(scene_dets, nms_iou)
    without_chips = sorted({im["scene"] for im in images}
                           - {im["scene"] for im in chips["images"]})
    if without_chips:
        log.warning("%d val scene(s) have no chips, so all their objects count as misses: %s",
                    len(without_chips), without_chips[:10])
    log.info("scene level: %d chip detections -> %d in %d scenes after clipping (%d outside "
             "the scene) -> %d after class-wise NMS at IoU %.2f", len(chip_predictions),
             len(scene_dets), len(images), emptied, len(merged), nms_iou)
    gt = scene_ground_truth(images, annotations_csv, chips["categories"])
    result = coco_evaluation(gt, merged, max_detections, source=annotations_csv)
    scenes = [im["scene"] for im in images]
    benchmark = score_protocols(
        [p for p in protocols if p != "coco"],
        protocol_objects(scenes, read_annotations(Path(annotations_csv))),
        protocol_detections(merged, images, chips["categories"]),
        [c["name"] for c in chips["categories"]], scenes, submission)
    result = {"level": "scene", "nms_iou": nms_iou, "chip_detections": len(chip_predictions),
              "outside_scene": emptied, "merged_away": len(scene_dets) - len(merged),
              "scenes_without_chips": without_chips, **result, "protocols": benchmark}
    return {"images": images, "detections": merged}, result


def evaluate_scene_files(predictions: str | Path, val: str | Path, scenes: str | Path,
                         annotations: str | Path, nms_iou: float, max_detections: int,
                         protocols: Sequence[str], scene_predictions: str | Path,
                         metrics: str | Path, submission: str | Path) -> dict:
    """The evaluate_scenes job: `evaluate_scenes` on the chip predictions file, its merged
    detections written to `scene_predictions` and its metrics to `metrics`."""
    detections, result = evaluate_scenes(
        json.loads(Path(predictions).read_text()), Path(predictions), Path(val), Path(scenes),
        Path(annotations), nms_iou, max_detections, protocols, Path(submission))
    Path(scene_predictions).write_text(json.dumps(detections) + "\n")
    Path(metrics).write_text(json.dumps(result, indent=1) + "\n")
    log.info("scene-level metrics: %s", json.dumps(result["metrics"]))
    return result
