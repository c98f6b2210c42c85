"""Oriented boxes on hand-computed cases: rbox from a polygon, polygon IoU, rotated NMS, the
scene merge of polygons, the rbox in COCO annotations and the report's rotated outlines."""

from __future__ import annotations

import json
import math

import pytest
from polygons import polygon_iou

from nadir.coco.files import build_coco
from nadir.core.geometry import rbox_from_polygon, rbox_to_polygon, rotated_nms
from nadir.evaluate.scenes import merge_overlaps, to_scene_coordinates


def rectangle(cx: float, cy: float, w: float, h: float, degrees: float) -> list[float]:
    """Corners written out by hand (not through rbox_to_polygon), starting at the +w/2 side."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [v for u, t in ((w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2), (-w / 2, -h / 2))
            for v in (cx + c * u - s * t, cy + s * u + c * t)]


@pytest.mark.parametrize(("degrees", "expected"), [(30, 30), (120, -60), (-90, -90), (90, -90),
                                                   (179, -1), (0, 0)])
def test_rbox_is_the_long_side_direction_in_minus_90_to_90(degrees, expected):
    assert rbox_from_polygon([rectangle(50, 40, 20, 10, degrees)]) == \
        pytest.approx([50, 40, 20, 10, expected], abs=0.011)


def test_the_short_side_first_gives_the_same_rbox():
    # The same 20 x 10 box at 30 degrees, described as 10 x 20 at 120 degrees.
    assert rbox_from_polygon([rectangle(50, 40, 10, 20, 120)]) == \
        pytest.approx([50, 40, 20, 10, 30], abs=0.011)


@pytest.mark.parametrize(("degrees", "expected"), [(0, 0), (90, 0), (60, -30), (45, -45)])
def test_a_square_has_its_angle_in_minus_45_to_45(degrees, expected):
    assert rbox_from_polygon([rectangle(10, 10, 8, 8, degrees)]) == \
        pytest.approx([10, 10, 8, 8, expected], abs=0.011)


def test_rbox_covers_every_vertex_of_all_polygons():
    # Two pieces of one object cut by a chip border: the rectangle holds both.
    assert rbox_from_polygon([[0, 0, 4, 0, 4, 2, 0, 2], [6, 0, 10, 0, 10, 2, 6, 2]]) == \
        [5, 1, 10, 2, 0]
    assert rbox_from_polygon([[0, 0, 3, 4]]) == [1.5, 2, 5, 0, 53.13]  # a segment: no height


@pytest.mark.parametrize("rbox", [[5, 6, 30, 12, 17.5], [0, 0, 9, 3, -89.5], [3, 4, 7, 7, 44]])
def test_rbox_to_polygon_and_back_is_the_same_rbox(rbox):
    assert rbox_from_polygon([rbox_to_polygon(rbox)]) == pytest.approx(rbox, abs=0.011)


def test_polygon_iou_on_hand_computed_cases():
    square = [0, 0, 2, 0, 2, 2, 0, 2]
    assert polygon_iou(square, square) == 1.0
    assert polygon_iou(square, [1, 0, 3, 0, 3, 2, 1, 2]) == pytest.approx(1 / 3)
    assert polygon_iou(square, [5, 5, 6, 5, 6, 6, 5, 6]) == 0.0
    # The same square turned 45 degrees about its centre: the overlap is a regular octagon of
    # area 8 (sqrt 2 - 1), so the IoU is sqrt(2) / 2.
    assert polygon_iou(square, rbox_to_polygon([1, 1, 2, 2, 45])) == pytest.approx(
        math.sqrt(2) / 2)


def test_rotated_nms_suppresses_by_polygon_iou_within_a_group_only():
    a, b, c = ([0, 0, 2, 0, 2, 2, 0, 2], [1, 0, 3, 0, 3, 2, 1, 2], [2, 0, 4, 0, 4, 2, 2, 2])
    # IoU(a, b) = IoU(b, c) = 1/3, IoU(a, c) = 0: b goes, and so c, suppressed by nobody, stays.
    assert rotated_nms([a, b, c], [0.9, 0.8, 0.7], [0, 0, 0], 0.3) == [0, 2]
    assert rotated_nms([a, b, c], [0.9, 0.8, 0.7], [0, 0, 0], 0.5) == [0, 1, 2]
    assert rotated_nms([c, b, a], [0.7, 0.8, 0.9], [0, 0, 0], 0.3) == [0, 2]
    assert rotated_nms([a, b], [0.9, 0.8], [0, 1], 0.3) == [0, 1]  # other class
    assert rotated_nms([], [], [], 0.3) == []


def test_parallel_diagonal_bars_survive_where_their_boxes_would_not():
    # Two thin bars at 45 degrees side by side: their axis-aligned boxes overlap by IoU ~0.8,
    # the bars themselves not at all.
    first, second = rbox_to_polygon([50, 50, 60, 4, 45]), rbox_to_polygon([54, 46, 60, 4, 45])
    assert polygon_iou(first, second) == 0.0
    detections = [{"image_id": 1, "category_id": 1, "score": s, "polygon": p,
                   "bbox": bounds_xywh(p)} for s, p in ((0.9, first), (0.8, second))]
    assert len(merge_overlaps(detections, 0.3)) == 2
    horizontal = [{k: v for k, v in d.items() if k != "polygon"} for d in detections]
    assert len(merge_overlaps(horizontal, 0.3)) == 1


def bounds_xywh(polygon: list[float]) -> list[float]:
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def test_polygons_from_two_chips_are_shifted_into_the_scene_and_merged():
    images = [{"id": 1, "scene": "S", "width": 400, "height": 400}]
    chips = {"images": [{"id": 10, "scene": "S", "x": 0, "y": 0},
                        {"id": 11, "scene": "S", "x": 100, "y": 0}]}
    # One vehicle at scene (130, 50), 20 x 8 at 30 degrees, seen by both chips.
    seen = [(10, [130, 50, 20, 8, 30], 0.9), (11, [30.5, 50, 20, 8, 31], 0.7)]
    chip_dets = [{"image_id": chip, "category_id": 2, "score": score,
                  "polygon": rbox_to_polygon(rbox), "bbox": bounds_xywh(rbox_to_polygon(rbox))}
                 for chip, rbox, score in seen]
    scene_dets, emptied = to_scene_coordinates(chip_dets, chips, images)
    assert emptied == 0
    assert scene_dets[1]["polygon"] == pytest.approx(
        rbox_to_polygon([130.5, 50, 20, 8, 31]))
    merged = merge_overlaps(scene_dets, 0.3)
    assert len(merged) == 1 and merged[0]["score"] == 0.9
    assert merged[0]["polygon"] == [round(v, 2) for v in rbox_to_polygon([130, 50, 20, 8, 30])]
    with pytest.raises(ValueError, match="1 of 2 detections carry a polygon"):
        merge_overlaps([scene_dets[0], {k: v for k, v in scene_dets[1].items()
                                        if k != "polygon"}], 0.3)


def test_coco_annotations_carry_the_rbox_of_their_segmentation(tmp_path):
    polygon = rectangle(60, 70, 24, 10, -20)
    shard = tmp_path / "shard-000.json"
    shard.write_text(json.dumps({"chips": [{
        "split": "train", "file": "c.jpg", "width": 128, "height": 128, "scene": "S", "x": 0,
        "y": 0, "transform": [1, 0, 0, 0, -1, 0],
        "objects": [{"category": "small-vehicle", "bbox": bounds_xywh(polygon),
                     "polygons": [polygon], "truncated": False, "difficult": 0}]}]}))
    coco = build_coco([shard], [{"id": 1, "name": "small-vehicle"}], ["train"])
    annotation = coco["train"]["annotations"][0]
    assert annotation["rbox"] == pytest.approx([60, 70, 24, 10, -20], abs=0.011)
    assert polygon_iou(rbox_to_polygon(annotation["rbox"]),
                       annotation["segmentation"][0]) == pytest.approx(1, abs=1e-3)


def test_the_report_outlines_oriented_predictions_and_truth_as_rotated_boxes():
    from matplotlib.patches import Polygon, Rectangle

    from nadir.report.figures import outline

    corners = rbox_to_polygon([20, 20, 16, 6, 30])
    prediction = {"bbox": bounds_xywh(corners), "polygon": corners}
    truth = {"bbox": bounds_xywh(corners), "rbox": [20, 20, 16, 6, 30]}
    for item in (prediction, truth):
        patch = outline(item, True, "red", "-")
        assert isinstance(patch, Polygon)
        assert patch.get_xy()[:4].ravel().tolist() == pytest.approx(corners)
    assert isinstance(outline(truth, False, "red", "-"), Rectangle)


def test_the_oriented_sample_config_is_valid_and_trains_an_oriented_model():
    from pathlib import Path

    import yaml

    from nadir.config import validate
    from nadir.config.catalogue import CATALOGUE

    path = Path(__file__).parents[1] / "config" / "oriented.yaml"
    config = validate(yaml.safe_load(path.read_text()), list(CATALOGUE))
    assert [CATALOGUE[m].oriented for m in config["models"]] == [True]
