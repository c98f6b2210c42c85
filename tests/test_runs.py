"""Runs derived from the config: sweeps, repeats, per-dataset chipping and training settings."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from conftest import run_snakemake

from nadir.config import ConfigError, dataset_chipping, runs, validate
from nadir.config.catalogue import CATALOGUE

SSD = "ssdlite320_mobilenet_v3_large"
FCOS = "fcos_resnet18_fpn"
BASE = {"datasets": {"dota": {"format": "sample"}, "xview": {"format": "sample"}},
        "models": {SSD: {}, FCOS: {"lr": 0.0007}}, "training": {"lr": 0.001, "seed": 5}}


def checked(edit=None) -> dict:
    config = copy.deepcopy(BASE)
    if edit:
        edit(config)
    return validate(config, list(CATALOGUE))


def test_without_sweeps_or_repeats_each_model_is_one_run_per_dataset():
    table = runs(checked())
    assert [(r.dataset, r.name) for r in table] == [
        ("dota", FCOS), ("dota", SSD), ("xview", FCOS), ("xview", SSD)]
    assert {r.hp["lr"] for r in table if r.model == FCOS} == {0.0007}


def test_sweep_cells_grid_and_repeats_name_their_runs_readably():
    def edit(config):
        config["sweeps"] = {SSD: {"cells": [{}, {"lr": 0.0005}],
                                  "grid": {"batch_size": [2, 8], "iterations": [100]}}}
        config["repeats"] = 2
    table = [r for r in runs(checked(edit)) if r.dataset == "dota" and r.model == SSD]
    by_name = {r.name: r for r in table}
    assert sorted(by_name) == sorted([
        SSD, f"{SSD}--repeat-2",
        f"{SSD}--lr-0.0005", f"{SSD}--lr-0.0005--repeat-2",
        f"{SSD}--batch_size-2--iterations-100", f"{SSD}--batch_size-2--iterations-100--repeat-2",
        f"{SSD}--batch_size-8--iterations-100", f"{SSD}--batch_size-8--iterations-100--repeat-2",
    ])
    cell = by_name[f"{SSD}--batch_size-8--iterations-100--repeat-2"]
    assert (cell.hp["batch_size"], cell.hp["iterations"], cell.hp["seed"]) == (8, 100, 6)
    assert (cell.cell, cell.repeat) == (f"{SSD}--batch_size-8--iterations-100", 2)
    assert by_name[SSD].hp["seed"] == 5 and by_name[f"{SSD}--lr-0.0005"].hp["lr"] == 0.0005


def test_settings_layer_from_training_to_the_dataset_pair_to_the_cell():
    def edit(config):
        config["datasets"]["xview"]["training"] = {"iterations": 300, "batch_size": 16}
        config["datasets"]["xview"]["models"] = {FCOS: {"lr": 0.0002, "iterations": 400}}
        config["sweeps"] = {FCOS: {"cells": [{}, {"iterations": 50}]}}
    table = {(r.dataset, r.name): r.hp for r in runs(checked(edit))}
    assert table[("dota", FCOS)]["lr"] == 0.0007  # models.<m> only
    assert table[("xview", SSD)]["iterations"] == 300  # dataset-wide
    assert (table[("xview", FCOS)]["lr"], table[("xview", FCOS)]["iterations"],
            table[("xview", FCOS)]["batch_size"]) == (0.0002, 400, 16)  # the pair wins
    assert table[("xview", f"{FCOS}--iterations-50")]["iterations"] == 50  # the cell wins


def test_each_dataset_chips_with_its_own_settings():
    def edit(config):
        config["chipping"] = {"size": 512, "overlap": 64}
        config["datasets"]["dota"]["chipping"] = {"size": 1024, "overlap": 200, "shards": 8}
    config = checked(edit)
    assert {k: dataset_chipping(config, "dota")[k] for k in ("size", "overlap", "shards")} == {
        "size": 1024, "overlap": 200, "shards": 8}
    assert {k: dataset_chipping(config, "xview")[k] for k in ("size", "overlap", "shards")} == {
        "size": 512, "overlap": 64, "shards": 2}


REAL = {"dota": {"format": "dota", "source": [{"url": "/data/DOTA/train.zip", "split": "train"}]},
        "xview": {"format": "xview", "source": [{"url": "/data/xview/train_images.tgz"}]},
        "rareplanes": {"format": "rareplanes", "source": [{"url": "s3://b/p/"}]}}


def _pretrained_of(edit) -> dict:
    """{(dataset, run): pretrained} of BASE's two models plus DETR (no weights offered) on the
    sample and three real datasets, after `edit`."""
    def datasets(config):
        config["datasets"] = {"sample": {"format": "sample"}, **copy.deepcopy(REAL)}
        config["models"]["detr_r50"] = {}
        edit(config)
    return {(r.dataset, r.name): r.hp["pretrained"] for r in runs(checked(datasets))}


@pytest.mark.parametrize("recipe", ["common", "reference"])
def test_pretrained_auto_is_the_best_weights_on_real_datasets_and_none_on_the_sample(recipe):
    table = _pretrained_of(lambda c: c["training"].update(recipe=recipe))
    for dataset in REAL:  # SSDlite offers coco and imagenet, FCOS-R18 imagenet, DETR none
        assert (table[(dataset, SSD)], table[(dataset, FCOS)],
                table[(dataset, "detr_r50")]) == ("coco", "imagenet", "none")
    assert {table[("sample", m)] for m in (SSD, FCOS, "detr_r50")} == {"none"}


def test_an_explicit_pretrained_wins_at_every_layer():
    def edit(config):
        config["training"]["pretrained"] = "none"  # the whole config from scratch ...
        config["models"][SSD] = {"pretrained": "imagenet"}  # ... but this model everywhere
        config["datasets"]["dota"]["models"] = {SSD: {"pretrained": "auto"}}  # auto again
        config["datasets"]["xview"]["training"] = {"pretrained": "auto"}
        config["datasets"]["sample"]["models"] = {FCOS: {"pretrained": "imagenet"}}
        config["sweeps"] = {FCOS: {"cells": [{}, {"pretrained": "none"}]}}
    table = _pretrained_of(edit)
    assert table[("rareplanes", SSD)] == table[("sample", SSD)] == "imagenet"
    assert table[("dota", SSD)] == "coco" and table[("rareplanes", FCOS)] == "none"
    # the dataset's `training` is a layer over `models.<model>`
    assert table[("xview", FCOS)] == "imagenet" and table[("xview", SSD)] == "coco"
    assert table[("sample", FCOS)] == "imagenet"
    assert table[("dota", f"{FCOS}--pretrained-none")] == "none"


def test_the_sample_runs_settings_are_those_of_pretrained_none():
    """The default `auto` leaves the sample's runs as they were (explicit `none`): the same
    settings, so the same train job params and checkpoint fingerprint; no rerun."""
    def with_pretrained(value):
        def edit(config):
            config["training"]["pretrained"] = value
        return {(r.dataset, r.name): r.hp for r in runs(checked(edit))}
    assert with_pretrained("auto") == with_pretrained("none")
    with pytest.raises(ConfigError, match="training.pretrained"):
        checked(lambda c: c["training"].update(pretrained="best"))


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["datasets"]["dota"].update(chipping={"size": 128, "overlap": 128}),
     "config key datasets.dota.chipping.overlap: 128 must be smaller than "
     "datasets.dota.chipping.size (128)"),
    (lambda c: c["datasets"]["dota"].update(chipping={"sise": 128}),
     "config key datasets.dota.chipping: unknown key(s) ['sise']"),
    (lambda c: c["datasets"]["dota"].update(models={"yolo9000": {}}),
     "config key datasets.dota.models: 'yolo9000' is not allowed"),
    (lambda c: c["datasets"]["dota"].update(models={"ssd300_vgg16": {"lr": 0.1}}),
     "config key datasets.dota.models.ssd300_vgg16: ssd300_vgg16 is not in `models`"),
    (lambda c: c["datasets"]["dota"].update(training={"lr": -1}),
     "config key datasets.dota.training.lr"),
    (lambda c: c.update(sweeps={SSD: {"grid": {"lrr": [0.1]}}}),
     "config key sweeps.ssdlite320_mobilenet_v3_large.grid: unknown key(s) ['lrr']"),
    (lambda c: c.update(sweeps={SSD: {"grid": {"batch_size": [2, "big"]}}}),
     "config key sweeps.ssdlite320_mobilenet_v3_large.grid.batch_size.1"),
    (lambda c: c.update(sweeps={"ssd300_vgg16": {"cells": [{}]}}),
     "config key sweeps.ssd300_vgg16: ssd300_vgg16 is not in `models`"),
    (lambda c: c.update(sweeps={SSD: {"cells": [{"seed": 1}]}}, repeats=3),
     "sweeps over `seed` and `repeats` > 1 both set seeds"),
    (lambda c: c.update(sweeps={SSD: {"cells": [{"lr": 0.1}], "grid": {"lr": [0.1]}}}),
     "cells ['ssdlite320_mobilenet_v3_large--lr-0.1'] appear twice"),
    (lambda c: c.update(sweeps={SSD: {}}), "config key sweeps.ssdlite320_mobilenet_v3_large: "
     "give `cells` or `grid`"),
    (lambda c: c.update(repeats=0), "config key repeats"),
])
def test_mistakes_name_the_key(edit, expected):
    with pytest.raises(ConfigError) as err:
        checked(edit)
    assert expected in str(err.value)


def test_two_datasets_chip_each_with_their_own_size(tmp_path):
    """Only the chipping stage of two tiny sample datasets: the manifests record each
    dataset's own settings and the chips have its size. `tiles` is chipped at its scene size,
    as RarePlanes' 512 px tiles would be: each scene passes through as one whole chip."""
    tiny = {"format": "sample", "train_scenes": 1, "val_scenes": 1, "scene_size": 256,
            "objects_per_scene": 6}
    config = {"datasets": {"small": tiny, "tiles": {**tiny, "chipping": {
                  "size": 256, "overlap": 64, "shards": 1}}},
              "models": {SSD: {}}, "chipping": {"size": 96, "overlap": 16, "shards": 2}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"),
                  "--replace-workflow-config", "results/small/chips/manifest.json",
                  "results/tiles/chips/manifest.json")
    for dataset, size, overlap, shards in (("small", 96, 16, 2), ("tiles", 256, 64, 1)):
        manifest = json.loads((tmp_path / f"results/{dataset}/chips/manifest.json").read_text())
        assert (manifest["params"]["size"], manifest["params"]["overlap"],
                manifest["shards"]) == (size, overlap, shards)
        chips = [c for n in range(shards) for c in json.loads(
            (tmp_path / f"results/{dataset}/chips/shard-{n:03d}.json").read_text())["chips"]]
        assert chips and {(c["width"], c["height"]) for c in chips} == {(size, size)}
    assert sorted((c["scene"], c["x"], c["y"]) for c in chips) == [
        ("T0000", 0, 0), ("V0000", 0, 0)]  # the last dataset, `tiles`: one chip per scene


def test_selection_split_is_carved_from_train_by_scene_with_a_seed():
    from nadir.coco.files import carve_selection

    train = {"categories": [{"id": 1, "name": "plane"}], "images": [], "annotations": []}
    for n in range(40):  # 10 scenes x 4 chips, one object per chip
        image = {"id": n + 1, "scene": f"S{n // 4}", "shard": n % 2, "file_name": f"{n}.jpg"}
        train["images"].append(image)
        train["annotations"].append({"id": 100 + n, "image_id": n + 1, "category_id": 1})
    fit, selection = carve_selection(train, 0.2, seed=3)
    fit_scenes = {im["scene"] for im in fit["images"]}
    selection_scenes = {im["scene"] for im in selection["images"]}
    assert len(selection_scenes) == 2 and not fit_scenes & selection_scenes
    assert len(fit["images"]) + len(selection["images"]) == 40
    assert {a["image_id"] for a in selection["annotations"]} == {
        im["id"] for im in selection["images"]}
    assert carve_selection(train, 0.2, seed=3)[1] == selection  # same seed, same scenes
    assert {im["scene"] for im in carve_selection(train, 0.2, seed=4)[1]["images"]} != \
        selection_scenes
