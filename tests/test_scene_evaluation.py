"""Scene-level evaluation: chip detections shifted into scenes, overlaps merged, scored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import ROOT
from dataset_builders import write_index_tables

from nadir.core.errors import InputError
from nadir.core.geometry import box_nms
from nadir.datasets.tables import Annotation
from nadir.evaluate.scenes import evaluate_scenes, merge_overlaps

CLASSES = ["plane", "ship", "container-crane"]


def rectangle(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


@pytest.fixture
def scene_files(tmp_path):
    """Val scene V1 (288 x 192 px) cut into two 192 px chips at x = 0 and x = 96, which share
    the strip x 96..192. A plane sits in that strip (120..160), so both chips see it; a ship is
    only in the second chip. A train scene must be ignored."""
    scenes = [{"scene": "T1", "split": "train", "width": 192, "height": 192, "bands": 3,
               "dtype": "uint8", "gsd": "", "objects": 1},
              {"scene": "V1", "split": "val", "width": 288, "height": 192, "bands": 3,
               "dtype": "uint8", "gsd": "", "objects": 2}]
    annotations = [Annotation("T1", 0, "plane", 0, rectangle(10, 10, 30, 30)),
                   Annotation("V1", 0, "plane", 0, rectangle(120, 50, 40, 30)),
                   Annotation("V1", 1, "ship", 0, rectangle(230, 100, 30, 60))]
    write_index_tables(tmp_path, scenes, annotations, CLASSES)
    chip = {"width": 192, "height": 192, "shard": 0, "scene": "V1", "y": 0}
    val = {"categories": json.loads((tmp_path / "categories.json").read_text()),
           "images": [{"id": 1, "file_name": "V1_0_0.jpg", "x": 0, **chip},
                      {"id": 2, "file_name": "V1_96_0.jpg", "x": 96, **chip}],
           "annotations": []}
    (tmp_path / "val.json").write_text(json.dumps(val))
    return tmp_path


def run(files, predictions, nms_iou=0.3, protocols=("coco",), submission=None):
    return evaluate_scenes(predictions, files / "predictions.json", files / "val.json",
                           files / "scenes.csv", files / "annotations.csv", nms_iou, 1000,
                           protocols, submission)


PLANE_IN_CHIP_1 = {"image_id": 1, "category_id": 1, "bbox": [120, 50, 40, 30], "score": 0.9}
PLANE_IN_CHIP_2 = {"image_id": 2, "category_id": 1, "bbox": [24.5, 50, 40, 30], "score": 0.8}
SHIP_IN_CHIP_2 = {"image_id": 2, "category_id": 2, "bbox": [134, 100, 30, 60], "score": 0.7}


def test_a_prediction_split_across_two_overlapping_chips_is_merged_into_one(scene_files):
    detections, result = run(scene_files, [PLANE_IN_CHIP_1, PLANE_IN_CHIP_2, SHIP_IN_CHIP_2])
    assert detections["images"] == [{"id": 1, "scene": "V1", "width": 288, "height": 192,
                                     "file_name": "V1"}]
    assert detections["detections"] == [
        {"image_id": 1, "category_id": 1, "bbox": [120, 50, 40, 30], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [230, 100, 30, 60], "score": 0.7},
    ]
    assert (result["chip_detections"], result["merged_away"], result["detections"]) == (3, 1, 2)
    assert result["metrics"]["AP"] == 1.0
    assert result["objects"] == 2 and result["images"] == 1  # the train scene is not scored
    assert result["per_class"][2]["status"] == "no ground truth"


def test_without_the_merge_the_duplicate_is_a_false_positive(scene_files):
    # A second plane, only in the first chip, found with a lower score than the duplicate.
    with open(scene_files / "annotations.csv", "a") as fh:
        fh.write("V1,2,plane,0,10 120 40 120 40 150 10 150\n")
    second_plane = {"image_id": 1, "category_id": 1, "bbox": [10, 120, 30, 30], "score": 0.5}
    predictions = [PLANE_IN_CHIP_1, PLANE_IN_CHIP_2, second_plane]
    _, merged = run(scene_files, predictions)
    detections, unmerged = run(scene_files, predictions, nms_iou=0.999)
    assert merged["per_class"][0]["AP50"] == 1.0
    assert len(detections["detections"]) == 3 and unmerged["merged_away"] == 0
    # Ranked: true (0.9), duplicate (0.8, false), true (0.5): precision 2/3 above recall 0.5.
    assert unmerged["per_class"][0]["AP50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)


def test_an_object_no_chip_detected_is_a_miss_at_scene_level(scene_files):
    _, result = run(scene_files, [PLANE_IN_CHIP_1])
    assert result["per_class"][1]["AP50"] == 0.0  # the ship
    assert result["metrics"]["ARmax"] == 0.5


def test_different_classes_never_suppress_each_other():
    same_box = {"image_id": 1, "bbox": [0, 0, 10, 10]}
    kept = merge_overlaps([{**same_box, "category_id": 1, "score": 0.9},
                           {**same_box, "category_id": 2, "score": 0.8},
                           {**same_box, "category_id": 1, "score": 0.7, "image_id": 2}], 0.3)
    assert [(d["image_id"], d["category_id"]) for d in kept] == [(1, 1), (1, 2), (2, 1)]


def test_boxes_are_clipped_to_the_scene(scene_files):
    # The second chip ends at 288, the scene's edge; a box reaching past it is clipped there,
    # and one wholly beyond it (in padding) is dropped and counted.
    beyond = {"image_id": 2, "category_id": 2, "bbox": [180, 100, 40, 60], "score": 0.6}
    outside = {"image_id": 2, "category_id": 2, "bbox": [195, 100, 10, 10], "score": 0.5}
    detections, result = run(scene_files, [beyond, outside])
    assert detections["detections"][0]["bbox"] == [276, 100, 12, 60]
    assert result["outside_scene"] == 1


def test_chips_of_an_unknown_scene_are_an_input_error(scene_files):
    val = json.loads((scene_files / "val.json").read_text())
    val["images"][1]["scene"] = "V9"
    (scene_files / "val.json").write_text(json.dumps(val))
    with pytest.raises(InputError, match=r"val\.json: chips of scenes \['V9'\]"):
        run(scene_files, [PLANE_IN_CHIP_1])


def test_unknown_category_in_the_annotation_table_names_scene_and_object(scene_files):
    path = scene_files / "annotations.csv"
    path.write_text(path.read_text().replace("V1,1,ship", "V1,1,submarine"))
    with pytest.raises(InputError, match=r"annotations\.csv: scene V1 object 1: category "
                                         r"'submarine'"):
        run(scene_files, [PLANE_IN_CHIP_1])


def test_benchmark_protocols_score_the_merged_scene_and_write_their_files(scene_files):
    """The duplicate across chips is merged before DOTA's and xView's protocols see it; an
    axis-aligned model has no task-1 number, and says why."""
    zip_path = scene_files / "submission.zip"
    detections, result = run(scene_files, [PLANE_IN_CHIP_1, PLANE_IN_CHIP_2],
                             protocols=["coco", "dota_task2", "dota_task1", "xview"],
                             submission=zip_path)
    task2 = result["protocols"]["dota_task2"]
    assert task2["status"] == "ok"
    # Plane found (AP 1), ship missed (0), container-crane without objects (0, as the devkit).
    assert [(r["name"], r["AP"]) for r in task2["per_class"]] == [
        ("plane", 1.0), ("ship", 0.0), ("container-crane", 0.0)]
    assert task2["map"] == pytest.approx(1 / 3, abs=1e-6)
    assert task2["classes_without_ground_truth"] == ["container-crane"]
    assert result["protocols"]["dota_task1"]["status"] == "not computed"
    assert "polygon" in result["protocols"]["dota_task1"]["reason"]
    # xView's scorer does not count the ship as a miss: no ship was detected in that scene.
    xview = result["protocols"]["xview"]
    assert xview["map"] == 0.5 and xview["recall"] == 1.0
    assert [r["objects_counted"] for r in xview["per_class"]] == [1, 0]
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(archive.namelist())
        assert names == ["dota_task2/Task2_container-crane.txt", "dota_task2/Task2_plane.txt",
                         "dota_task2/Task2_ship.txt", "xview/V1.tif.txt"]
        assert archive.read("dota_task2/Task2_plane.txt") == b"V1 0.9 120.0 50.0 160.0 80.0\n"
        # The sample's classes are not xView classes: no line can name their type id.
        assert archive.read("xview/V1.tif.txt") == b""


def test_oriented_detections_get_dota_task1_numbers(scene_files):
    """A detection with a `polygon` (an oriented model) is shifted into the scene with its box
    and scored by its outline: a thin rotated outline inside the plane's box misses it."""
    rotated = [121, 60, 159, 62, 158, 70, 120, 68]  # inside the box, IoU with it about 0.25
    plane = {**PLANE_IN_CHIP_1, "polygon": rectangle(120, 50, 40, 30)}
    plane_in_chip_2 = {**PLANE_IN_CHIP_2, "score": 0.95,
                       "polygon": [x - 96 if i % 2 == 0 else x for i, x in enumerate(rotated)]}
    zip_path = scene_files / "submission.zip"
    detections, result = run(scene_files, [plane, plane_in_chip_2], nms_iou=0.999,
                             protocols=["coco", "dota_task1"], submission=zip_path)
    assert detections["detections"][1]["polygon"] == rotated
    task1 = {r["name"]: r for r in result["protocols"]["dota_task1"]["per_class"]}
    # Ranked: the rotated outline (0.95, IoU < 0.5: false), the exact one (0.9, true).
    assert (task1["plane"]["true_positives"], task1["plane"]["false_positives"]) == (1, 1)
    assert task1["plane"]["AP"] == 0.5  # precision 1/2 at every recall point
    with zipfile.ZipFile(zip_path) as archive:
        lines = archive.read("dota_task1/Task1_plane.txt").decode().splitlines()
    assert lines[0] == "V1 0.9 120.0 50.0 160.0 50.0 160.0 80.0 120.0 80.0"


@pytest.mark.parametrize(("count", "iou"), [(300, 0.3), (300, 0.7), (1500, 0.5)])
def test_box_nms_keeps_what_torchvision_batched_nms_keeps(count, iou):
    """The scene merge's NMS (no torch) against torchvision's, on detections as chips give them:
    2-decimal boxes, jittered copies of the same objects, scores with ties, several groups.
    1,500 boxes take torchvision's per-group path, 300 its coordinate-offset one."""
    import torch
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(count)
    objects = rng.uniform(0, 900, (count // 5, 2))
    corners = np.repeat(objects, 5, axis=0) + rng.normal(0, 4, (count, 2))
    sizes = rng.uniform(8, 60, (count, 2))
    boxes = np.round(np.hstack([corners, corners + sizes]), 2)
    boxes[::17] = boxes[1::17][: len(boxes[::17])]  # some exact duplicates
    scores = np.round(rng.uniform(0.05, 1.0, count), 2)  # many equal scores
    groups = rng.integers(0, 4, count)
    expected = sorted(batched_nms(torch.tensor(boxes), torch.tensor(scores),
                                  torch.tensor(groups), iou).tolist())
    assert box_nms(boxes, scores, groups, iou) == expected


def test_the_scene_merge_does_not_import_torch():
    code = ("import sys; from nadir.evaluate.scenes import merge_overlaps; "
            "kept = merge_overlaps([{'image_id': 1, 'category_id': 1, 'score': s, "
            "'bbox': [0, 0, 10, 10]} for s in (0.9, 0.8)], 0.5); "
            "assert [d['score'] for d in kept] == [0.9], kept; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr
