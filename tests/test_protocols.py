"""The DOTA and xView protocols give the reference implementations' numbers.

The fixtures hold generated cases and what DOTA_devkit's task-1/task-2 evaluators and xView's
scorer computed on them (tests/fixtures/protocols/make_reference.py, with the commit and the
command inside each file). Where the reference crashed, the fixture holds its error and nadir's
defined result is checked instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nadir.config import ConfigError, validate
from nadir.protocols.ap import all_point_ap, voc07_ap
from nadir.protocols.dota import evaluate_dota, write_result_files
from nadir.protocols.xview import evaluate_xview, write_prediction_files

FIXTURES = Path(__file__).parent / "fixtures" / "protocols"
DOTA = json.loads((FIXTURES / "dota.json").read_text())
XVIEW = json.loads((FIXTURES / "xview.json").read_text())
TOLERANCE = 1e-6


def test_fixtures_record_the_reference_and_enough_cases():
    for fixture in (DOTA, XVIEW):
        assert len(fixture["reference"]["commit"]) == 40
        assert "make_reference.py" in fixture["reference"]["command"]
        assert len(fixture["cases"]) >= 6


@pytest.mark.parametrize("task", [1, 2])
@pytest.mark.parametrize("case", DOTA["cases"], ids=[c["name"] for c in DOTA["cases"]])
def test_dota_equals_the_devkit(case, task):
    result = evaluate_dota(case["objects"], case["detections"], case["classes"], task)
    reference = case["reference"][f"dota_task{task}"]
    ours = {row["name"]: row for row in result["per_class"]}
    for name, expected in reference["per_class"].items():
        if isinstance(expected, dict):
            # The devkit crashed on this class (an empty result file): nadir defines AP 0.
            assert "IndexError" in expected["error"]
            assert ours[name]["detections"] == 0 and ours[name]["AP"] == 0.0
        else:
            assert ours[name]["AP"] == pytest.approx(expected, abs=TOLERANCE), name
    if reference["map"] is not None:
        assert result["map"] == pytest.approx(reference["map"], abs=TOLERANCE)
    else:  # the devkit's mean over its classes, the crashed ones counting 0
        numbers = [v if isinstance(v, float) else 0.0 for v in reference["per_class"].values()]
        assert result["map"] == pytest.approx(np.mean(numbers), abs=TOLERANCE)


@pytest.mark.parametrize("case", XVIEW["cases"], ids=[c["name"] for c in XVIEW["cases"]])
def test_xview_equals_the_scorer(case):
    result = evaluate_xview(case["objects"], case["detections"], case["type_ids"])
    reference = case["reference"]
    for key in ("map", "map_small", "map_medium", "map_large", "map_common", "map_rare",
                "precision", "recall", "f1"):
        if reference[key] is None:
            assert result[key] is None, key
        else:
            assert result[key] == pytest.approx(reference[key], abs=TOLERANCE), key
    assert {r["name"]: r["AP"] for r in result["per_class"]} == pytest.approx(
        reference["per_class"], abs=TOLERANCE)


def test_dota_cases_cover_what_defines_the_numbers():
    """The fixtures exercise each rule the issue names, so a wrong rule fails a case."""
    by_name = {c["name"]: c for c in DOTA["cases"]}
    difficult = by_name["difficult objects"]
    assert any(o["difficult"] for o in difficult["objects"])
    threshold = by_name["small boxes at the threshold"]["reference"]
    # Pixel-inclusive task 2 boxes overlap more than the same outlines in task 1.
    assert threshold["dota_task2"]["map"] > threshold["dota_task1"]["map"]
    assert by_name["missing objects"]["reference"]["dota_task2"]["per_class"]["plane"] \
        == pytest.approx(6 / 11)  # recall 0.3 does not reach the 0.30000000000000004 point


def test_voc07_recall_of_exactly_three_tenths_misses_the_fourth_point():
    precision, recall = np.array([1.0, 1.0, 1.0]), np.array([0.1, 0.2, 0.3])
    assert voc07_ap(precision, recall) == pytest.approx(3 / 11)


def test_all_point_ap_uses_the_precision_envelope():
    # precision 1 at recall 0.5, then 2/3 at recall 1: area 0.5 * 1 + 0.5 * 2/3.
    assert all_point_ap(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) \
        == pytest.approx(0.5 + 1 / 3)


def test_dota_result_files_have_the_submission_format(tmp_path):
    detections = [{"image": "P0001", "category": "plane", "score": 0.9,
                   "bbox": [1.0, 2.0, 11.5, 12.0],
                   "polygon": [1.0, 2.0, 11.5, 2.0, 11.5, 12.0, 1.0, 12.0]}]
    task1 = write_result_files(detections, ["plane", "ship"], 1, tmp_path / "t1")
    task2 = write_result_files(detections, ["plane", "ship"], 2, tmp_path / "t2")
    assert [p.name for p in task1] == ["Task1_plane.txt", "Task1_ship.txt"]
    assert task1[0].read_text() == "P0001 0.9 1.0 2.0 11.5 2.0 11.5 12.0 1.0 12.0\n"
    assert task1[1].read_text() == ""
    assert task2[0].read_text() == "P0001 0.9 1.0 2.0 11.5 12.0\n"


def test_xview_prediction_files_have_the_scorer_format(tmp_path):
    detections = [{"image": "5.tif", "category": "Small Car", "score": 0.25,
                   "bbox": [3.0, 4.0, 13.0, 24.5]},
                  {"image": "5.tif", "category": "not xView", "score": 0.5,
                   "bbox": [3.0, 4.0, 13.0, 24.5]}]
    paths = write_prediction_files(detections, ["5.tif", "6.tif"],
                                   {"Small Car": 18, "not xView": None}, tmp_path)
    assert [p.name for p in paths] == ["5.tif.txt", "6.tif.txt"]
    assert paths[0].read_text() == "3.0 4.0 13.0 24.5 18 0.25\n"
    assert paths[1].read_text() == ""


def _config(evaluation: dict | None = None) -> dict:
    config = {"datasets": {"s": {"format": "sample"}},
              "models": {"ssdlite320_mobilenet_v3_large": {}}}
    if evaluation is not None:
        config["evaluation"] = evaluation
    return config


def test_protocols_default_by_dataset_format():
    config = _config()
    validate(config, ["ssdlite320_mobilenet_v3_large"])
    assert config["evaluation"]["protocols"] == {
        "dota": ["coco", "dota_task2", "dota_task1"],
        "sample": ["coco", "dota_task2", "dota_task1"],
        "xview": ["coco", "xview"], "rareplanes": ["coco"]}


@pytest.mark.parametrize("protocols", [["xview"], ["coco", "voc"], ["coco", "coco"]])
def test_protocols_must_include_coco_and_name_known_protocols_once(protocols):
    with pytest.raises(ConfigError, match=r"evaluation\.protocols\.xview"):
        validate(_config({"protocols": {"xview": protocols}}), ["ssdlite320_mobilenet_v3_large"])
