"""Config validation: defaults filled in; every typo stopped, naming the key and what is allowed."""

import copy
import re

import pytest

from nadir.config import ConfigError, model_hyperparameters, validate
from nadir.config.catalogue import CATALOGUE
from nadir.core.schema import renamed_keys

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

    from nadir.config.reference import render

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


DOTA = {"format": "dota", "source": [{"url": "/data/DOTA/train.zip", "split": "train"}]}


@pytest.mark.parametrize("dataset, key", [
    ({"format": "sample", "source": [{"url": "/data/x.zip"}]}, "datasets.d.source"),
    ({"format": "sample", "version": "v1.5"}, "datasets.d.version"),
    ({"format": "sample", "class_attribute": "role"}, "datasets.d.class_attribute"),
    ({**DOTA, "train_scenes": 10}, "datasets.d.train_scenes"),
    ({**DOTA, "tiled": False}, "datasets.d.tiled"),
    ({"format": "rareplanes", "version": "v1.5", "source": [{"url": "s3://b/p/"}]},
     "datasets.d.version"),
    ({"format": "dota", "source": [{"url": "/x.zip", "anonymous": False}]},
     "datasets.d.source.0.anonymous"),
    ({"format": "xview", "source": [{"url": "s3://b/x/", "sha256": "0" * 64}]},
     "datasets.d.source.0.sha256"),
    ({**DOTA, "split": {"val_fraction": 0.3}}, "datasets.d.split.val_fraction"),
    ({"format": "xview", "source": [{"url": "/x.tgz"}], "split": {"method": "official"}},
     "datasets.d.split.method"),
], ids=["source-on-sample", "version-on-sample", "class_attribute-on-sample",
        "train_scenes-on-dota", "tiled-on-dota", "version-on-rareplanes",
        "anonymous-on-a-file", "sha256-on-s3", "val_fraction-with-official-split",
        "official-split-on-xview"])
def test_keys_that_do_nothing_for_the_format_are_errors_naming_the_key(dataset, key):
    with pytest.raises(ConfigError, match=rf"config key {key}: "):
        checked({**MINIMAL, "datasets": {"d": dataset}})


@pytest.mark.parametrize("old", sorted(renamed_keys()))
def test_every_renamed_key_fails_naming_its_new_key(old):
    """A config of an earlier version stops before any job, saying which key to use now."""
    from conftest import ROOT

    section, _, key = old.partition(".")
    new = renamed_keys()[old]["key"]
    with pytest.raises(ConfigError, match=rf"config key {re.escape(old)} was replaced by "
                                          rf"{re.escape(new)}: "):
        checked({**MINIMAL, section: {key: 1}})
    checked({**MINIMAL, new.split(".")[0]: {}})  # the new key's section itself is fine
    readme = (ROOT / "config" / "README.md").read_text()
    assert f"| `{old}` | `{new}` |" in readme  # the migration note


def test_the_sample_takes_the_index_settings_of_a_dota_source():
    """The sample is a DOTA source: its classes, split and bad-input policy are set as DOTA's."""
    dataset = {"format": "sample", "classes": {"keep": ["plane"]},
               "split": {"method": "seeded", "val_fraction": 0.3},
               "on_bad_input": {"outside_image": "error"}}
    checked_dataset = checked({**MINIMAL, "datasets": {"d": dataset}})["datasets"]["d"]
    assert checked_dataset["classes"]["keep"] == ["plane"]
    assert checked_dataset["split"]["method"] == "seeded"


@pytest.mark.parametrize("config, message", [
    ({"training": {"iterations": 40, "warmup_iterations": 50}},
     r"training.warmup_iterations \(model ssdlite320_mobilenet_v3_large\): 50 is more than its "
     r"40 iterations"),
    ({"training": {"iterations": 100}, "models": {"ssdlite320_mobilenet_v3_large": {
        "iterations": 20, "warmup_iterations": 10}}, "checkpoints": {"every": 30}},
     "checkpoints.every: 30 is more than the 20 iterations of model"),
], ids=["warmup-longer-than-training", "checkpoint-interval-longer-than-training"])
def test_training_settings_that_defeat_each_other_are_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        checked({**MINIMAL, **config})
    if "checkpoints" in config:  # the default interval (100) is not the user's contradiction
        checked({**MINIMAL, **{k: v for k, v in config.items() if k != "checkpoints"}})
