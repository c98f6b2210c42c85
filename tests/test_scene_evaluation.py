"""Scene-level evaluation: chip detections shifted into scenes, overlaps merged, scored."""

from __future__ import annotations

import json

import pytest

from nadir.errors import InputError
from nadir.index import Annotation, IndexTables, write_tables
from nadir.scene_evaluation import evaluate_scenes, merge_overlaps

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
    write_tables(IndexTables.in_folder(tmp_path), scenes, annotations, CLASSES)
    chip = {"width": 192, "height": 192, "shard": 0, "scene": "V1", "y": 0}
    val = {"categories": json.loads((tmp_path / "categories.json").read_text()),
           "images": [{"id": 1, "file_name": "V1_0_0.jpg", "x": 0, **chip},
                      {"id": 2, "file_name": "V1_96_0.jpg", "x": 96, **chip}],
           "annotations": []}
    (tmp_path / "val.json").write_text(json.dumps(val))
    return tmp_path


def run(files, predictions, nms_iou=0.3):
    return evaluate_scenes(predictions, files / "predictions.json", files / "val.json",
                           files / "scenes.csv", files / "annotations.csv", nms_iou, 1000)


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
