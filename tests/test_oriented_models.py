"""The oriented detector: its box coding on hand-made boxes, its targets under the training
augmentations, and a few training iterations on tiny chips that end in polygon predictions."""

from __future__ import annotations

import json
import math

import pytest
import tiny_chips
import torch
from polygons import polygon_iou

from nadir.config.catalogue import CATALOGUE
from nadir.core.geometry import rbox_to_polygon
from nadir.train import window_detector
from nadir.train.backends import get_backend
from nadir.train.data import ShardChips, flip_rotate_points, random_flip_rotate
from nadir.train.models.oriented_models import (
    decode,
    quads_to_rboxes,
    rboxes_to_quads,
    side_distances,
)

RBOXES = [[40.0, 30.0, 20.0, 8.0, 30.0], [10.0, 12.0, 9.0, 3.0, -80.0],
          [25.0, 25.0, 12.0, 12.0, 20.0]]


def in_radians(rboxes: list[list[float]]) -> torch.Tensor:
    return torch.tensor([r[:4] + [math.radians(r[4])] for r in rboxes], dtype=torch.float64)


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype),
                               atol=atol, rtol=0)


def test_corners_and_rboxes_agree_with_the_coco_convention():
    quads = rboxes_to_quads(in_radians(RBOXES))
    assert_close(quads, [rbox_to_polygon(r) for r in RBOXES])
    assert_close(quads_to_rboxes(quads), in_radians(RBOXES))
    # The short side first and a half turn describe the same box: the same rbox comes back.
    turned = in_radians([[40, 30, 8, 20, 120], [40, 30, 20, 8, 210]])
    assert_close(quads_to_rboxes(rboxes_to_quads(turned)), in_radians([RBOXES[0]] * 2))


def test_decoding_a_locations_side_distances_gives_its_box_back():
    rboxes = in_radians(RBOXES)
    points = rboxes[:, :2] + torch.tensor([[3.0, -1.0], [1.0, 0.5], [-4.0, 2.0]],
                                          dtype=torch.float64)
    sides = side_distances(points, rboxes)[torch.arange(3), torch.arange(3)]
    assert (sides > 0).all()  # every point lies inside its box
    angle = torch.stack([torch.cos(2 * rboxes[:, 4]), torch.sin(2 * rboxes[:, 4])], 1)
    assert_close(decode(points, sides, angle), rboxes)


@pytest.mark.parametrize("code", range(8))
def test_augmented_corners_stay_the_corners_of_the_augmented_boxes(code):
    quads = rboxes_to_quads(in_radians(RBOXES)).float()
    boxes = torch.stack([quads[:, 0::2].min(1).values, quads[:, 1::2].min(1).values,
                         quads[:, 0::2].max(1).values, quads[:, 1::2].max(1).values], 1)
    pixels = torch.zeros(3, 48, 64)
    turned = flip_rotate_points(quads, code, width=64, height=48)
    _, turned_boxes = random_flip_rotate(pixels, boxes, code)
    assert_close(torch.stack([turned[:, 0::2].min(1).values, turned[:, 1::2].min(1).values,
                              turned[:, 0::2].max(1).values, turned[:, 1::2].max(1).values],
                             1), turned_boxes, atol=1e-4)
    assert_close(quads_to_rboxes(turned)[:, 2:4], quads_to_rboxes(quads)[:, 2:4], atol=1e-4)


def test_chips_give_the_corners_of_their_rbox(tmp_path):
    data = tiny_chips.build(tmp_path, chips=2, size=64)
    coco = json.loads(data["coco"].read_text())
    first = next(a for a in coco["annotations"] if a["image_id"] == 1)
    first["rbox"] = [30, 30, 20, 6, 45]
    data["coco"].write_text(json.dumps(coco))
    chips = ShardChips(data["coco"], [data["shard"]])
    assert_close(chips[0][1]["quads"][0], rbox_to_polygon([30, 30, 20, 6, 45]), atol=1e-4)
    # Annotations without an rbox (COCO files of older runs) give their bbox corners.
    x, y, w, h = next(a for a in coco["annotations"] if a["image_id"] == 2)["bbox"]
    assert_close(chips[1][1]["quads"][0], [x, y, x + w, y, x + w, y + h, x, y + h])


def test_a_few_iterations_on_tiny_chips_predict_polygons(tmp_path):
    name = "oriented_fcos_resnet18_fpn"
    assert CATALOGUE[name].oriented
    data = tiny_chips.build(tmp_path / "data", chips=2, size=64)
    hp = tiny_chips.hyperparameters(iterations=2, log_interval=1, amp=False)
    job = tiny_chips.train_job(data, name, hp, tmp_path / "out")
    backend = get_backend("torchvision")
    backend.train(job)
    predictions = backend.predict(tmp_path / "out" / "model.pt", data["coco"], [data["shard"]],
                                  {"score_threshold": 0.0, "max_detections": 10,
                                   "batch_size": 2})
    assert predictions and len(predictions) <= 2 * 10
    for p in predictions:
        assert len(p["polygon"]) == 8
        x, y, w, h = p["bbox"]
        xs, ys = p["polygon"][0::2], p["polygon"][1::2]
        # The box is the polygon's bounds, clipped to the 64 px chip.
        assert [x, y, x + w, y + h] == pytest.approx(
            [max(0, min(xs)), max(0, min(ys)), min(64, max(xs)), min(64, max(ys))], abs=0.02)
    # Within a chip and class, the model's own rotated NMS (IoU 0.5) left no close duplicate.
    for i, a in enumerate(predictions):
        for b in predictions[i + 1:]:
            if (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"]):
                assert polygon_iou(a["polygon"], b["polygon"]) <= 0.5 + 1e-3
    # Inference on new imagery runs the same model on windows: same detections, polygons too.
    detect, _, chip_params = window_detector(tmp_path / "out" / "model.pt",
                                             score_threshold=0.0, max_detections=10)
    assert chip_params.size == 64  # the chips it learnt from, as their manifest says
    coco = json.loads(data["coco"].read_text())
    chips = ShardChips(data["coco"], [data["shard"]])
    windows = [chips[i][0].numpy() for i in range(len(chips))]  # the chips as stored
    for image, found in zip(coco["images"], detect(windows), strict=True):
        expected = [{k: v for k, v in p.items() if k != "image_id"} for p in predictions
                    if p["image_id"] == image["id"]]
        assert found == expected
