"""Untrusted input never runs code and never makes nadir read what it should not: the name rule
and where it holds (manifests and chip lists read back), rules that run no shell command, the
issue's zip attack run through Snakemake, the raster opener's roles and bounds, and how weights
files are read. The cases a user meets as bad input (a hostile archive name, VRT rasters, absurd
sizes, corrupt tiles, pickle payloads, changed weights) are in the fault matrix
(tests/test_faults.py); tests/hostile.py builds the hostile inputs of both. docs/security.md
lists which test shows which rule.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import hostile
import numpy as np
import pytest
import yaml
from conftest import ROOT, TEST_CONFIG, run_snakemake
from dataset_builders import index_tables, make_dota

from nadir.chip.shard import images_by_scene
from nadir.core.errors import InputError
from nadir.core.names import check_name, check_relative_path, safe_name
from nadir.fetch import fetch_dataset, read_scene_manifest
from nadir.raster.opener import image_header
from nadir.storage.download import FetchSettings
from nadir.storage.shards import read_chip_list

HOSTILE_NAMES = ["P0000$(touch X)", "a;touch X", "a`touch X`", "a b", "a'b", 'a"b', "a|b",
                 "a&b", "a>b", "a\nb", "..", ".hidden", "-rf", "_x", "a/b", "a\\b", "c:x",
                 "a!b", "", "é"]


# --- the name rule --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["P0000", "P0000.png", "2355.tif", "labelTxt-v1.5",
                                  "100_1040010029990A00_tile_319.png", "xView_train.geojson"])
def test_dataset_file_names_follow_the_name_rule(name):
    assert check_name(name, "where") == name


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_names_with_shell_path_or_option_meaning_are_refused_naming_the_source(name):
    with pytest.raises(InputError, match=r"^manifest\.json: scene name .* is refused"):
        check_name(name, "manifest.json", "scene name")


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.png", "a/../../x.png", "a//b.png",
                                  "a/b$(id).png", "a/.ssh/x"])
def test_paths_read_from_data_are_relative_and_stay_inside(path):
    with pytest.raises(InputError, match="is refused"):
        check_relative_path(path, "m.json")
    assert check_relative_path("00-train/images/P0000.png", "m.json")


def test_names_nadir_makes_itself_are_made_safe():
    assert safe_name("S2A 2026/11/30", "scene") == "S2A_2026_11_30"
    assert safe_name("$(touch X)", "scene") == "touch_X_"
    assert safe_name("../..", "scene") == "scene"


DOTA_INDEX_SPEC = {"split": {"method": "official", "val_fraction": 0.2, "seed": 0},
                   "classes": {"merge": {}, "keep": None, "min_size": 0}, "on_bad_input": {}}


def tampered(manifest: dict, **scene_changes) -> dict:
    tampered = json.loads(json.dumps(manifest))
    tampered["scenes"][0].update(scene_changes)
    return tampered


@pytest.fixture(scope="module")
def fetched_dota(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fetched")
    sources = make_dota(root / "data", train=2, val=1, size=96)
    spec = {"format": "dota", "version": "v1.5", "source": [
        {"url": str(sources["train"]), "split": "train"},
        {"url": str(sources["val"]), "split": "val"}]}
    manifest = fetch_dataset("d", spec, root / "files", FetchSettings(root / "cache", 0, 5))
    return root, manifest


@pytest.mark.parametrize("change", [
    {"scene": "P0000$(touch PWNED)"}, {"image": "/etc/passwd.png"},
    {"image": "00-train/../../outside.png"}, {"label": "00-train/labelTxt/`id`.txt"}])
def test_a_tampered_scene_manifest_is_refused_when_read_back(fetched_dota, tmp_path, change):
    """A manifest from shared storage: the index and the workflow read it through
    read_scene_manifest, which names the manifest and the entry."""
    root, manifest = fetched_dota
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(tampered(manifest, **change)))
    with pytest.raises(InputError, match=r"manifest\.json: .* is refused"):
        read_scene_manifest(path)
    from nadir.index.normalise import index_dataset

    with pytest.raises(InputError, match="is refused"):
        index_dataset(path, root / "files", {"format": "dota", "version": "v1.5",
                                             **DOTA_INDEX_SPEC},
                      index_tables(tmp_path / "index"))
    assert not (tmp_path / "index" / "annotations.csv").exists()


def test_chip_job_images_and_chip_lists_read_back_follow_the_name_rule(tmp_path):
    with pytest.raises(InputError, match=r"scene name 'a;b' is refused"):
        images_by_scene([Path("x/a;b.png")])
    with pytest.raises(InputError, match="also the name of"):
        images_by_scene([Path("x/a.png"), Path("y/a.tif")])
    chip = {"scene": "a", "file": "../../evil.jpg", "split": "train"}
    listing = tmp_path / "shard-000.json"
    listing.write_text(json.dumps({"chips": [chip]}))
    with pytest.raises(InputError, match=r"shard-000\.json: chip file name '\.\./\.\./evil\.jpg' "
                                         "is refused"):
        read_chip_list(listing)


# --- rules call code through scripts, never a shell -------------------------------------------

def rule_directives(text: str) -> dict[str, list[str]]:
    """Every rule's (and checkpoint's) directives in the text of a rule file, by rule name:
    the names of the directives it sets (`input`, `script`, ...)."""
    rules: dict[str, list[str]] = {}
    rule = None
    for line in text.splitlines():
        if header := re.match(r"(?:rule|checkpoint)\s+(\w+)\s*:", line):
            rule = header.group(1)
            rules[rule] = []
        elif rule and (directive := re.match(r"    (\w+):", line)):
            rules[rule].append(directive.group(1))
        elif line and not line.startswith((" ", "#")):
            rule = None
    return rules


RULES = {rule: directives for path in sorted((ROOT / "workflow" / "rules").glob("*.smk"))
         for rule, directives in rule_directives(path.read_text()).items()}


def test_every_rule_with_work_runs_a_script_and_none_a_shell_command():
    """Nothing a rule hands its job is ever parsed by a shell: values from data (scene names,
    paths, URLs) reach the stage functions as Python objects (snakemake.input, params), so
    no quoting can fail. `all` and `predict` only collect targets."""
    assert {"fetch", "index", "chip", "train", "predict_scene", "leaderboard"} <= set(RULES)
    doing_work = {rule: directives for rule, directives in RULES.items()
                  if rule not in ("all", "predict")}
    assert [rule for rule, d in doing_work.items() if "script" not in d] == []
    assert [rule for rule, d in RULES.items() if {"shell", "run"} & set(d)] == []
    scripts = {p.stem for p in (ROOT / "workflow" / "scripts").glob("*.py")}
    assert scripts == set(doing_work)  # one script per rule, named as the rule


def test_the_rule_reader_sees_a_shell_command():
    """The control: the reader finds a rule's directives, a shell command included."""
    text = "rule x:\n    input:\n        'a'\n    shell:\n        'echo {input}'\n"
    assert rule_directives(text) == {"x": ["input", "shell"]}


def dota_config(tmp_path: Path, sources: dict[str, Path]) -> Path:
    config = json.loads(json.dumps(TEST_CONFIG))
    config["datasets"] = {"d": {"format": "dota", "version": "v1.5", "source": [
        {"url": str(sources["train"]), "split": "train"},
        {"url": str(sources["val"]), "split": "val"}]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_zip_attack_through_snakemake_stops_at_fetch_and_runs_nothing(tmp_path):
    """The reproduction, end to end: Snakemake runs the fetch job on the hostile zip, which
    fails naming the file; a manifest planted in the working directory as if a fetch had
    written it (a tampered one, from shared storage) stops the workflow while it plans the
    chip jobs. Nothing ran in either (no PWNED anywhere)."""
    sources = hostile.hostile_dota(tmp_path / "data")
    config = dota_config(tmp_path, sources)
    work = tmp_path / "work"
    proc = run_snakemake(work, "--configfile", str(config), "--replace-workflow-config",
                         "raw/d/manifest.json", check=False)
    assert proc.returncode != 0
    log = (work / "logs" / "d" / "fetch.log").read_text()
    assert re.search(r"P0001\$\(touch PWNED\)\.png: file name .* is refused", log), log
    assert not (work / "raw" / "d" / "manifest.json").exists()

    files = work / "raw" / "d" / "files"
    files.mkdir(parents=True, exist_ok=True)
    planted = {"dataset": "d", "format": "dota", "version": "v1.5", "sources": [],
               "label_files": [], "labels_without_image": [], "scenes": [
                   {"scene": "P0001$(touch PWNED)", "split": "train", "width": 96,
                    "height": 96, "bands": 3, "dtype": "uint8", "crs": None, "transform": None,
                    "image": "00-train/images/P0001$(touch PWNED).png",
                    "label": "00-train/labelTxt-v1.5/P0001$(touch PWNED).txt"}]}
    (work / "raw" / "d" / "manifest.json").write_text(json.dumps(planted))
    proc = run_snakemake(work, "--configfile", str(config), "--replace-workflow-config", "-n",
                         check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"raw/d/manifest\.json: scene name 'P0001\$\(touch PWNED\)' is refused",
                     output), output[-3000:]
    assert not list(tmp_path.rglob("PWNED"))


# --- rasters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("location, message", [
    ("scene.vrt", r"must be one of \.tif, \.tiff, \.png, \.jpg, \.jpeg .* not \.vrt"),
    ("scene.jp2", r"not \.jp2"),
    ("scene", "not without a suffix"),
    ("/vsicurl/http://169.254.169.254/x.tif", "GDAL's virtual file systems .* are not opened"),
    ("zip://a.zip!x.tif", "GDAL's virtual file systems and other schemes are not opened"),
    ("https://example.org/x.tif", "a dataset image must be a local file, not a URL"),
])
def test_dataset_images_open_only_by_an_allowed_suffix_from_a_local_path(location, message):
    with pytest.raises(InputError, match=message):
        image_header(Path(location) if "://" not in location else location)


def test_chips_are_decoded_only_as_jpeg_png_or_tiff(tmp_path):
    """A chip in a shard (which may come from shared storage) is decoded as JPEG or PNG
    (Pillow) or TIFF (GDAL's GTiff driver) only: Pillow would open dozens of formats, EPS
    through Ghostscript. Training, the figures and the
    detectron2 adapter all decode through decode_chip."""
    import tarfile

    from PIL import Image

    from nadir.storage.shards import decode_chip
    from nadir.train.data import ShardChips

    members = {}
    for name, kind in (("chip-000.png", "PNG"), ("chip-001.png", "BMP")):
        data = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 10, 10)).save(data, format=kind)
        members[name] = data.getvalue()
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [
        {"id": n + 1, "file_name": name, "width": 8, "height": 8, "shard": 0}
        for n, name in enumerate(members)], "annotations": [],
        "categories": [{"id": 1, "name": "plane"}]}))
    chips = ShardChips(coco, [shard])
    assert chips.read_image(0)[0, 0].tolist() == [200, 10, 10]
    with pytest.raises(InputError, match=r"shard-000\.tar: chip chip-001\.png: not a JPEG, "
                                         r"PNG or TIFF chip"):
        chips.read_image(1)
    with pytest.raises(InputError, match="not a JPEG, PNG or TIFF chip"):
        decode_chip(b"%!PS-Adobe-3.0 EPSF-3.0\n", "x.png")
    with pytest.raises(InputError, match="not a readable TIFF chip"):  # a TIFF header only
        decode_chip(b"II*\x00" + b"\xff" * 60, "x.tif")


def test_the_index_of_a_fetched_dataset_bounds_the_sizes_its_manifest_declares(fetched_dota,
                                                                               tmp_path):
    from nadir.index.normalise import index_dataset

    root, manifest = fetched_dota
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(tampered(manifest, width=10**7, height=10**7)))
    with pytest.raises(InputError, match=r"P0000\.png: declares 10000000 x 10000000 px x 3 "
                                         r"band\(s\) .* \(config key rasters\.max_values\)"):
        index_dataset(path, root / "files", {"format": "dota", "version": "v1.5",
                                             **DOTA_INDEX_SPEC},
                      index_tables(tmp_path / "index"))


# --- weights ----------------------------------------------------------------------------------

def test_the_payload_runs_when_unpickled_plainly(tmp_path):
    """The control: a plain unpickler runs the payload (in a process of its own)."""
    marker = tmp_path / "ran"
    data = pickle.dumps({"model": {"w": hostile.Payload(marker)}})
    subprocess.run([sys.executable, "-c", "import pickle, sys; "
                    "pickle.loads(sys.stdin.buffer.read())"], input=data, check=True,
                   timeout=60)
    assert marker.exists()


def test_model_files_and_checkpoints_with_a_payload_are_refused(tmp_path):
    """model.pt and checkpoints (maybe from shared storage) are read the same way."""
    from nadir.train import window_detector
    from nadir.train.backends import backend_of_weights

    marker = tmp_path / "ran"
    weights = hostile.torch_payload(tmp_path / "model.pt", marker)
    for read in (backend_of_weights, lambda w: window_detector(w, 0.3, 10)):
        with pytest.raises(InputError, match=r"model\.pt: refused: it holds pickled objects"):
            read(weights)
    assert not marker.exists()


def test_an_imagenet_backbone_is_built_from_a_file_of_tensors_without_torchvision_loading_it(
        tmp_path, monkeypatch):
    """torchvision builds the pretrained-backbone architecture (SSDlite's full MobileNetV3
    tail: the strict load below fails on the reduced tail it builds without weights) and gets
    nadir's tensors; its hub cache is never looked at."""
    import torch
    from torchvision.models import mobilenet_v3_large, resnet18

    from nadir.train.models.torchvision_models import build_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for model, trunk, file_name in (
            ("ssdlite320_mobilenet_v3_large", mobilenet_v3_large,
             "mobilenet_v3_large-8738ca79.pth"),
            ("fcos_resnet18_fpn", resnet18, "resnet18-f37072fd.pth")):
        state = {k: torch.full_like(v, 0.125) if v.is_floating_point() else v
                 for k, v in trunk(weights=None).state_dict().items()}
        torch.save(state, tmp_path / file_name)
        built = build_model(model, 2, 64, "imagenet", tmp_path / file_name)
        loaded = [v for v in built.state_dict().values()
                  if v.is_floating_point() and v.numel() > 1 and bool((v == 0.125).all())]
        assert len(loaded) > 20, model  # random init makes no tensor of 0.125s
    assert not (tmp_path / "torch-home").exists()


def test_an_imagenet_file_of_the_wrong_backbone_is_refused_naming_it(tmp_path):
    import torch
    from torchvision.models import resnet18

    from nadir.train.models.torchvision_models import build_model

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "mobilenet.pth")
    with pytest.raises(InputError, match=r"mobilenet\.pth: does not fit "
                                         r"ssdlite320_mobilenet_v3_large's backbone"):
        build_model("ssdlite320_mobilenet_v3_large", 2, 64, "imagenet",
                    tmp_path / "mobilenet.pth")


def test_detectron2_pkl_files_are_read_as_arrays_only(tmp_path):
    """The restricted unpickler detectron2's weights go through (its contract, tested without
    detectron2): model zoo files as they are, Caffe2 files as blobs; a payload, or any class
    but numpy's arrays, is refused naming the file, and nothing runs."""
    from nadir.train.detectron2 import detectron2_checkpoint

    zoo = {"model": {"backbone.conv1.weight": np.ones((2, 3), np.float32),
                     "scale": np.float32(2.0)}, "__author__": "Detectron2 Model Zoo"}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        (tmp_path / "zoo.pkl").write_bytes(pickle.dumps(zoo, protocol=protocol))
        read = detectron2_checkpoint(tmp_path / "zoo.pkl")
        assert read["__author__"] == "Detectron2 Model Zoo"
        np.testing.assert_array_equal(read["model"]["backbone.conv1.weight"], np.ones((2, 3)))
        assert read["model"]["scale"] == 2.0
    caffe2 = {"blobs": {"conv1_w": np.zeros(3), "conv1_w_momentum": np.zeros(3)}}
    (tmp_path / "R-50.pkl").write_bytes(pickle.dumps(caffe2, protocol=2))
    assert detectron2_checkpoint(tmp_path / "R-50.pkl") == {
        "model": {"conv1_w": pytest.approx(np.zeros(3))}, "__author__": "Caffe2",
        "matching_heuristics": True}
    marker = tmp_path / "ran"
    for name, data in (
            ("payload.pkl", {"model": {"w": hostile.Payload(marker)}, "__author__": "x"}),
            ("path.pkl", {"model": {"w": Path("/etc/passwd")}, "__author__": "x"}),
            ("objects.pkl", {"model": {"w": np.array([None, 1], dtype=object)}})):
        (tmp_path / name).write_bytes(pickle.dumps(data, protocol=2))
        with pytest.raises(InputError, match=rf"{re.escape(name)}: refused"):
            detectron2_checkpoint(tmp_path / name)
    hostile.torch_payload(tmp_path / "mae.pth", marker)
    with pytest.raises(InputError, match=r"mae\.pth: refused: it holds pickled objects"):
        detectron2_checkpoint(tmp_path / "mae.pth")
    assert not marker.exists()
