"""Repeat statistics and the paired bootstrap, on constructed results with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nadir.compare.bootstrap import (
    average_precision,
    compare_dataset,
    comparison_html,
    paired_bootstrap,
    scene_matches,
    summarise_repeats,
    t_quantile_975,
)
from nadir.evaluate.chips import coco_evaluation


@pytest.mark.parametrize("df, expected", [(1, 12.706204736174704), (2, 4.302652729911275),
                                          (4, 2.7764451051977987), (29, 2.045229642132703)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=1e-9)


def test_repeat_summary_by_hand():
    # mean 0.6; deviations -0.1, 0, 0.1 -> sd sqrt(0.02 / 2) = 0.1; half-width t(2) * 0.1 / sqrt 3
    summary = summarise_repeats([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert summary["n"] == 3
    assert summary["mean"] == pytest.approx(0.6)
    assert summary["sd"] == pytest.approx(0.1)
    assert (summary["ci_low"], summary["ci_high"]) == (pytest.approx(0.6 - half),
                                                       pytest.approx(0.6 + half))
    assert summarise_repeats([0.42]) == {"n": 1, "mean": 0.42, "sd": None, "ci_low": None,
                                         "ci_high": None}


def scenes_with_objects(count: int, seed: int = 0) -> dict:
    """COCO ground truth of `count` 500 px scenes with 2 classes and 3-8 objects each."""
    rng = np.random.default_rng(seed)
    gt = {"images": [{"id": i + 1, "scene": f"S{i:02d}", "width": 500, "height": 500}
                     for i in range(count)],
          "categories": [{"id": 1, "name": "plane"}, {"id": 2, "name": "ship"}],
          "annotations": []}
    for image in gt["images"]:
        for _ in range(rng.integers(3, 9)):
            x, y = rng.uniform(0, 400, 2)
            w, h = rng.uniform(10, 60, 2)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1,
                                      "image_id": image["id"], "category_id": int(
                                          rng.integers(1, 3)), "bbox": [x, y, w, h],
                                      "area": w * h, "iscrowd": 0})
    return gt


def noisy_detections(gt: dict, seed: int, jitter: float, miss: float) -> list[dict]:
    """Each object found with probability 1 - miss (box shifted by up to `jitter` px), plus
    false alarms; random scores, some tied."""
    rng = np.random.default_rng(seed)
    detections = []
    for a in gt["annotations"]:
        if rng.random() < miss:
            continue
        x, y, w, h = a["bbox"]
        dx, dy = rng.uniform(-jitter, jitter, 2)
        detections.append({"image_id": a["image_id"], "category_id": a["category_id"],
                           "bbox": [x + dx, y + dy, w, h],
                           "score": round(float(rng.uniform(0.3, 1)), 1)})
    for image in gt["images"]:
        for _ in range(3):
            x, y = rng.uniform(0, 450, 2)
            detections.append({"image_id": image["id"], "category_id": int(rng.integers(1, 3)),
                               "bbox": [x, y, 30.0, 30.0],
                               "score": round(float(rng.uniform(0, 0.9)), 1)})
    return detections


def test_matching_once_gives_the_coco_engines_ap():
    gt = scenes_with_objects(12)
    detections = noisy_detections(gt, seed=1, jitter=6, miss=0.2)
    coco = coco_evaluation(gt, detections, max_detections=100)["metrics"]
    matches = scene_matches(gt, detections, max_detections=100)
    assert average_precision(matches) == pytest.approx(coco["AP"], abs=1e-6)
    assert average_precision(matches, metric="AP50") == pytest.approx(coco["AP50"], abs=1e-6)


def test_a_scene_weighted_twice_scores_like_the_scene_listed_twice():
    gt = scenes_with_objects(6)
    detections = noisy_detections(gt, seed=2, jitter=8, miss=0.3)
    # Distinct scores: COCO breaks score ties by image order, which would put the copy's
    # detections after other scenes' equal-scored ones instead of beside the original's.
    for rank, detection in enumerate(detections):
        detection["score"] = 1 - rank / len(detections)
    copy_id = len(gt["images"]) + 1
    doubled = {**gt, "images": gt["images"] + [{**gt["images"][0], "id": copy_id}],
               "annotations": gt["annotations"] + [
                   {**a, "id": 1000 + a["id"], "image_id": copy_id}
                   for a in gt["annotations"] if a["image_id"] == 1]}
    doubled_detections = detections + [{**d, "image_id": copy_id}
                                       for d in detections if d["image_id"] == 1]
    expected = coco_evaluation(doubled, doubled_detections, max_detections=100)["metrics"]["AP"]
    weights = np.array([2.0, 1, 1, 1, 1, 1])
    matches = scene_matches(gt, detections, max_detections=100)
    assert average_precision(matches, weights) == pytest.approx(expected, abs=1e-6)


def test_identical_models_differ_by_exactly_zero():
    gt = scenes_with_objects(10)
    detections = noisy_detections(gt, seed=3, jitter=5, miss=0.2)
    same = scene_matches(gt, detections, 100)
    result = paired_bootstrap({"a": [same], "b": [same]}, resamples=200, seed=0)
    (pair,) = result["pairs"]
    assert (pair["difference"], pair["ci_low"], pair["ci_high"]) == (0.0, 0.0, 0.0)
    assert not pair["distinguishable"]
    assert result["verdicts"]["a" if result["best"] == "b" else "b"] == \
        "not distinguishable from the best"


def test_a_model_better_on_every_scene_is_distinguishable():
    gt = scenes_with_objects(10)
    good = noisy_detections(gt, seed=4, jitter=1, miss=0.0)
    # The weak model finds only the first object of each scene, at the same boxes.
    first = {}
    for a in gt["annotations"]:
        first.setdefault(a["image_id"], a)
    weak = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9} for a in first.values()]
    runs = {"good": [scene_matches(gt, good, 100)], "weak": [scene_matches(gt, weak, 100)]}
    for s in range(len(gt["images"])):  # better on every single scene
        alone = np.zeros(len(gt["images"]))
        alone[s] = 1
        assert average_precision(runs["good"][0], alone) > average_precision(runs["weak"][0],
                                                                               alone)
    result = paired_bootstrap(runs, resamples=300, seed=7)
    (pair,) = result["pairs"]
    assert pair["first"] == "good" and pair["difference"] > 0
    assert 0 < pair["ci_low"] <= pair["difference"] <= pair["ci_high"]
    assert result["best"] == "good"
    assert result["verdicts"] == {"good": "best", "weak": "worse than the best"}
    # Seeded: the same seed gives the same interval.
    again = paired_bootstrap(runs, resamples=300, seed=7)["pairs"][0]
    assert (again["ci_low"], again["ci_high"]) == (pair["ci_low"], pair["ci_high"])


def test_repeats_are_averaged_per_draw():
    gt = scenes_with_objects(8)
    seeds = [scene_matches(gt, noisy_detections(gt, seed=s, jitter=6, miss=0.3), 100)
             for s in (10, 11)]
    result = paired_bootstrap({"cell": seeds, "other": seeds[:1]}, resamples=50, seed=0)
    assert result["repeats"] == {"cell": 2, "other": 1}
    assert result["observed"]["cell"] == pytest.approx(
        (average_precision(seeds[0]) + average_precision(seeds[1])) / 2)


def test_models_scored_on_other_scenes_are_refused():
    gt = scenes_with_objects(4)
    fewer = {**gt, "images": gt["images"][:3],
             "annotations": [a for a in gt["annotations"] if a["image_id"] <= 3]}
    with pytest.raises(Exception, match="same test scenes"):
        paired_bootstrap({"a": [scene_matches(gt, [], 100)],
                          "b": [scene_matches(fewer, [], 100)]}, resamples=5, seed=0)


def test_a_dataset_comparison_groups_repeats_by_their_settings():
    gt = scenes_with_objects(8)

    def run(name, model, seed, lr, detections):
        record = {"dataset": "dota", "model": model,
                  "hyperparameters": {"lr": lr, "seed": seed}}
        return name, record, {"images": gt["images"], "detections": detections}

    good = [noisy_detections(gt, seed=s, jitter=2, miss=0.05) for s in (20, 21)]
    weak = noisy_detections(gt, seed=22, jitter=12, miss=0.6)
    result = compare_dataset([run("m", "m", 0, 0.001, good[0]),
                              run("m--repeat-2", "m", 1, 0.001, good[1]),
                              run("m--lr-0.01", "m", 0, 0.01, weak)],
                             gt, max_detections=100, metric="AP50", resamples=200, seed=1)
    assert result["settings"] == {"m": ["m", "m--repeat-2"], "m--lr-0.01": ["m--lr-0.01"]}
    assert result["repeats"] == {"m": 2, "m--lr-0.01": 1}
    assert result["best"] == "m" and result["verdicts"]["m--lr-0.01"] == "worse than the best"
    page = comparison_html(result)
    assert "Pairwise comparison on dota" in page and "worse than the best" in page
