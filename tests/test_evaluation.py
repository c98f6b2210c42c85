"""Chip-level COCO evaluation: known answers, the no-ground-truth class, and the two engines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from coco_problems import CATEGORIES, generated_set

from nadir.core.errors import InputError
from nadir.evaluate.chips import evaluate
from nadir.protocols.coco import (
    METRIC_NAMES,
    NO_GROUND_TRUTH,
    coco_evaluation,
    run_cocoeval,
    summarise,
)


def ground_truth(boxes: list[tuple[int, int, list[float]]], images: int = 2) -> dict:
    """COCO ground truth from (image id, category id, xywh box)."""
    return {
        "images": [{"id": i, "width": 256, "height": 256, "file_name": f"{i}.jpg"}
                   for i in range(1, images + 1)],
        "categories": CATEGORIES,
        "annotations": [{"id": n, "image_id": im, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0}
                        for n, (im, cat, box) in enumerate(boxes, start=1)],
    }


TRUTH = [(1, 1, [10, 10, 40, 30]), (1, 2, [100, 120, 20, 50]), (2, 1, [60, 60, 35, 35]),
         (2, 2, [5, 200, 30, 20])]


def perfect(truth=TRUTH) -> list[dict]:
    return [{"image_id": im, "category_id": cat, "bbox": box, "score": 0.9}
            for im, cat, box in truth]


def test_perfect_predictions_score_one():
    result = coco_evaluation(ground_truth(TRUTH), perfect(), max_detections=100)
    m = result["metrics"]
    assert m["AP"] == m["AP50"] == m["AP75"] == m["ARmax"] == 1.0
    assert m["AP_large"] == -1.0  # no object above 96 x 96 px: COCO's "no such objects"
    for row in result["per_class"][:2]:
        assert (row["status"], row["AP"], row["AP50"]) == ("ok", 1.0, 1.0)
    assert result["pr_curve"]["precision"]["plane"] == [1.0] * 101


def test_class_without_ground_truth_is_reported_not_zero(caplog):
    # The val split has no container-crane; the model still predicts one.
    detections = perfect() + [{"image_id": 2, "category_id": 3, "bbox": [0, 0, 9, 9],
                               "score": 0.99}]
    result = coco_evaluation(ground_truth(TRUTH), detections, max_detections=100)
    crane = result["per_class"][2]
    assert crane == {"id": 3, "name": "container-crane", "objects": 0, "detections": 1,
                     "status": NO_GROUND_TRUTH, "AP": None, "AP50": None}
    assert result["pr_curve"]["precision"]["container-crane"] is None
    assert result["metrics"]["AP"] == 1.0  # averaged over the classes that have objects
    assert "'container-crane' has no ground-truth objects" in caplog.text
    json.dumps(result, allow_nan=False)  # no NaN anywhere in what is written


def test_a_false_positive_above_the_true_positive_halves_ap50():
    truth = [(1, 1, [10, 10, 40, 30])]
    detections = [{"image_id": 1, "category_id": 1, "bbox": [150, 150, 40, 30], "score": 0.9},
                  {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "score": 0.5}]
    result = coco_evaluation(ground_truth(truth), detections, max_detections=100)
    # Precision is 1/2 at the only recall level reached (1.0), interpolated back to recall 0.
    assert result["metrics"]["AP50"] == pytest.approx(0.5)
    assert result["per_class"][0]["AP50"] == pytest.approx(0.5)
    assert result["per_class"][1]["status"] == NO_GROUND_TRUTH


def test_max_detections_limits_what_counts_per_image():
    # 30 objects in one image, found with descending scores: only the first 10 count at 10.
    truth = [(1, 2, [8 * i, 8 * j, 6, 6]) for i in range(6) for j in range(5)]
    detections = [dict(d, score=1 - n / 100) for n, d in enumerate(perfect(truth))]
    at_10 = coco_evaluation(ground_truth(truth, images=1), detections, max_detections=10)
    at_100 = coco_evaluation(ground_truth(truth, images=1), detections, max_detections=100)
    assert at_10["metrics"]["ARmax"] == pytest.approx(10 / 30)
    assert at_100["metrics"]["ARmax"] == 1.0
    assert at_100["max_detections"] == 100


def test_no_detections_give_zero_not_an_error():
    result = coco_evaluation(ground_truth(TRUTH), [], max_detections=100)
    assert result["metrics"]["AP"] == 0.0
    assert [r["AP"] for r in result["per_class"]] == [0.0, 0.0, None]


def test_unknown_image_in_predictions_names_the_file_and_detection(tmp_path):
    coco = tmp_path / "val.json"
    coco.write_text(json.dumps(ground_truth(TRUTH)))
    bad = perfect() + [{"image_id": 77, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1}]
    with pytest.raises(InputError, match=r"val\.json: detection 4 names image 77"):
        evaluate(coco, bad, max_detections=100)


def test_an_oriented_outline_without_four_corners_names_the_detection(tmp_path):
    coco = tmp_path / "val.json"
    coco.write_text(json.dumps(ground_truth(TRUTH)))
    bad = perfect()
    bad[2] = {**bad[2], "polygon": [0, 0, 5, 0, 5, 5]}
    with pytest.raises(InputError, match=r"val\.json: detection 2: polygon must be the four "):
        evaluate(coco, bad, max_detections=100)


def test_ground_truth_without_objects_is_an_input_error(tmp_path):
    coco = tmp_path / "val.json"
    coco.write_text(json.dumps(ground_truth([])))
    with pytest.raises(InputError, match="the ground truth has no objects"):
        evaluate(coco, [], max_detections=100)


@pytest.mark.parametrize("max_detections", [100, 20])
def test_faster_coco_eval_matches_pycocotools(max_detections):
    gt, detections = generated_set(images=240, seed=7)
    assert len(gt["images"]) >= 200 and len(detections) > 2000
    fast = run_cocoeval(gt, detections, max_detections, "faster-coco-eval")
    reference = run_cocoeval(gt, detections, max_detections, "pycocotools")
    for key in ("precision", "recall", "scores"):
        np.testing.assert_allclose(fast.eval[key], reference.eval[key], rtol=0, atol=1e-6)
    ours = coco_evaluation(gt, detections, max_detections, "faster-coco-eval")
    theirs = coco_evaluation(gt, detections, max_detections, "pycocotools")
    assert ours["metrics"] == pytest.approx(theirs["metrics"], abs=1e-6)
    assert ours["per_class"] == theirs["per_class"]
    for name, curve in ours["pr_curve"]["precision"].items():
        assert curve == pytest.approx(theirs["pr_curve"]["precision"][name], abs=1e-6)
    assert 0.1 < ours["metrics"]["AP"] < 0.9  # a problem with real misses and confusions


def test_summary_equals_pycocotools_own_summary_at_the_coco_default():
    gt, detections = generated_set(images=60, seed=3)
    reference = run_cocoeval(gt, detections, 100, "pycocotools")
    reference.summarize()
    assert list(summarise(reference).values()) == pytest.approx(list(reference.stats),
                                                                abs=1e-6)
    assert len(METRIC_NAMES) == len(reference.stats)
