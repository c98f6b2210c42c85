"""Evaluation figures from hand-built scores, chips and shards."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import pytest
from PIL import Image

from nadir.core.errors import InputError
from nadir.core.named_inputs import input_name
from nadir.report import figures
from nadir.report.figures import (
    class_ap_matrix,
    pick_sample_chips,
    plot_class_heatmap,
    plot_class_heatmap_of_files,
    plot_detection_grid,
    plot_pr_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scores(plane_ap: float) -> dict:
    return {
        "per_class": [
            {"name": "plane", "status": "ok", "AP": plane_ap, "AP50": plane_ap},
            {"name": "container-crane", "status": "no ground truth", "AP": None, "AP50": None},
        ],
        "pr_curve": {"iou": 0.5, "recall": [i / 100 for i in range(101)],
                     "precision": {"plane": [plane_ap] * 101, "container-crane": None}},
    }


def test_heat_map_matrix_marks_a_class_without_ground_truth():
    classes, matrix = class_ap_matrix([scores(0.25), scores(0.75)])
    assert classes == ["plane", "container-crane"]
    assert matrix[:, 0].tolist() == [0.25, 0.75]
    assert all(math.isnan(v) for v in matrix[:, 1])


def test_heat_map_and_pr_curves_are_written(tmp_path):
    plot_class_heatmap(["fcos", "ssdlite"], [scores(0.2), scores(0.6)],
                       [scores(0.1), scores(0.5)], tmp_path / "ap.png", "Per-class AP")
    plot_pr_curves(scores(0.4), scores(0.3), tmp_path / "pr.png", "fcos on dota")
    for name in ("ap.png", "pr.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def test_heat_map_rows_pair_each_run_with_its_own_metrics_by_name(tmp_path, monkeypatch):
    named = {}
    for kind, runs in (("metrics", ["fcos", "ssdlite"]), ("scene_metrics", ["ssdlite", "fcos"])):
        for run in runs:  # scene metrics listed in the other order
            ap = {"fcos": 0.2, "ssdlite": 0.6}[run] / (2 if kind == "scene_metrics" else 1)
            path = tmp_path / f"{run}-{kind}.json"
            path.write_text(json.dumps(scores(ap)))
            named[input_name(kind, f"dota/{run}")] = str(path)
    drawn = {}
    monkeypatch.setattr(figures, "plot_class_heatmap",
                        lambda models, chip, scene, out, title: drawn.update(
                            models=models, chip=chip, scene=scene))
    plot_class_heatmap_of_files(named, tmp_path / "ap.png", "Per-class AP on dota")
    assert drawn["models"] == ["fcos", "ssdlite"]
    assert [m["per_class"][0]["AP"] for m in drawn["chip"]] == [0.2, 0.6]
    assert [m["per_class"][0]["AP"] for m in drawn["scene"]] == [0.1, 0.3]


def test_sample_chips_put_chips_with_objects_first_and_spread_evenly():
    coco = {"images": [{"id": i} for i in range(1, 11)],
            "annotations": [{"image_id": i} for i in (3, 5, 7, 9)]}
    assert [im["id"] for im in pick_sample_chips(coco, 4)] == [3, 5, 7, 9]
    assert [im["id"] for im in pick_sample_chips(coco, 3)] == [3, 7, 9]
    assert [im["id"] for im in pick_sample_chips(coco, 6)] == [3, 5, 7, 9, 1, 10]
    assert len(pick_sample_chips(coco, 50)) == 10


def shard_with_chip(tmp_path) -> tuple[dict, list]:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[10:30, 20:40] = 255
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, format="PNG")
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("S1_0_0.png")
        info.size = len(data.getvalue())
        tar.addfile(info, io.BytesIO(data.getvalue()))
    coco = {"images": [{"id": 1, "file_name": "S1_0_0.png", "shard": 0, "scene": "S1",
                        "x": 0, "y": 0, "width": 64, "height": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "bbox": [20, 10, 20, 20]}],
            "categories": [{"id": 1, "name": "plane"}]}
    (tmp_path / "val.json").write_text(json.dumps(coco))
    return coco, [shard]


def test_detection_grid_draws_truth_and_predictions_above_the_minimum_score(tmp_path, caplog):
    _, shards = shard_with_chip(tmp_path)
    predictions = [{"image_id": 1, "category_id": 1, "bbox": [21, 11, 19, 19], "score": 0.9},
                   {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1}]
    caplog.set_level("INFO")
    plot_detection_grid(tmp_path / "val.json", predictions, shards, tmp_path / "grid.png",
                        "fcos on sample", count=9, min_score=0.3)
    assert (tmp_path / "grid.png").read_bytes().startswith(PNG_MAGIC)
    assert "drew 1 val chips: 1 ground-truth boxes, 1 predictions with score >= 0.3" in caplog.text


def test_a_chip_missing_from_its_shard_is_an_input_error(tmp_path):
    coco, shards = shard_with_chip(tmp_path)
    coco["images"][0]["file_name"] = "S1_0_64.png"
    (tmp_path / "val.json").write_text(json.dumps(coco))
    with pytest.raises(InputError, match=r"shard-000\.tar: chip S1_0_64\.png is not in this"):
        plot_detection_grid(tmp_path / "val.json", [], shards, tmp_path / "grid.png", "t",
                            count=4, min_score=0.3)
