"""Config validation: defaults filled in; every typo stopped, naming the key and what is allowed."""

import copy

import pytest

from nadir.config import ConfigError, model_hyperparameters, validate
from nadir.training.catalogue import CATALOGUE

MINIMAL = {
    "datasets": {"sample": {"format": "sample"}},
    "models": {"ssdlite320_mobilenet_v3_large": {}},
}


def checked(config):
    return validate(copy.deepcopy(config), list(CATALOGUE))


def test_defaults_are_filled_in():
    config = checked(MINIMAL)
    assert config["chipping"]["size"] == 256
    assert config["chipping"]["overlap"] == 32
    assert config["training"]["lr"] == 0.001
    assert config["datasets"]["sample"]["train_scenes"] == 40
    assert config["evaluation"]["max_detections"] == 100


def test_model_overrides_apply_to_that_model_only():
    config = checked({**MINIMAL, "models": {"ssdlite320_mobilenet_v3_large": {"lr": 0.0005},
                                            "fcos_resnet18_fpn": None}})
    assert model_hyperparameters(config, "ssdlite320_mobilenet_v3_large")["lr"] == 0.0005
    assert model_hyperparameters(config, "fcos_resnet18_fpn")["lr"] == 0.001
    # Overrides are not filled with defaults, so a later edit of `training` still applies.
    assert config["models"]["ssdlite320_mobilenet_v3_large"] == {"lr": 0.0005}


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c.update(training={"lrr": 0.1}),
     ["training", "'lrr'", "allowed keys", "'lr'"]),
    (lambda c: c.update(training={"lr": "fast"}),
     ["training.lr", "expected number", "'fast'"]),
    (lambda c: c["models"].update(yolo9000={}),
     ["models", "'yolo9000'", "ssdlite320_mobilenet_v3_large"]),
    (lambda c: c["datasets"]["sample"].update(format="dotaa"),
     ["datasets.sample.format", "'dotaa'", "allowed values", "sample"]),
    (lambda c: c["models"].update(ssdlite320_mobilenet_v3_large={"batch_size": 0}),
     ["models.ssdlite320_mobilenet_v3_large.batch_size", "minimum"]),
    (lambda c: c.update(chipping={"size": 128, "overlap": 128}),
     ["chipping.overlap", "smaller than chipping.size"]),
])
def test_mistakes_name_the_key_and_the_allowed_values(edit, expected):
    config = copy.deepcopy(MINIMAL)
    edit(config)
    with pytest.raises(ConfigError) as err:
        checked(config)
    for text in expected:
        assert text in str(err.value)


def test_every_problem_is_reported_at_once():
    config = copy.deepcopy(MINIMAL)
    config["training"] = {"lrr": 1}
    config["evaluation"] = {"max_detections": -3}
    with pytest.raises(ConfigError, match=r"2 problem\(s\)") as err:
        checked(config)
    assert "evaluation.max_detections" in str(err.value)


def test_config_reference_documents_every_key_and_is_current():
    from conftest import ROOT

    from nadir.config_reference import render

    text = render()
    for key in ["`size`", "`min_visible`", "`lr`", "`max_detections`", "`format`"]:
        assert key in text
    assert (ROOT / "config" / "README.md").read_text() == text, (
        "config/README.md is stale: run `python -m nadir config-reference > config/README.md`")


def test_readme_model_table_lists_every_catalogue_model():
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Models"):readme.index("## What has been verified")]
    for name, entry in CATALOGUE.items():
        row = next((line for line in table.splitlines() if line.startswith(f"| `{name}`")), None)
        assert row is not None, f"README.md's model table lacks {name}"
        assert entry.backend in row and entry.licence in row
