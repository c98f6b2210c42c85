"""The bad-input and fault matrix: every case ends in a named error or a counted skip, leaves
no partial output that looks complete, deletes no earlier result, and a rerun once the fault is
cleared gives what an undisturbed run gives.

Each case is one function registered under its name with `@case`; docs/faults.md lists the
same names in its table (checked by `test_docs_table_lists_every_case`). Cases exercise the
stage functions directly on data they build, against a fault-injecting HTTP server
(`dataset_builders.FileServer`) and the real SeaweedFS server, alone or behind a proxy that
injects faults (`s3proxy.FaultProxy`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import hostile
import numpy as np
import pytest
import s3server
from conftest import ROOT
from dataset_builders import (
    FileServer,
    Redirecting,
    fetch_in_two_processes,
    index_tables,
    part_files,
    self_signed,
    tar_gz_bomb,
    write_geotiff,
    write_png,
    zip_bomb,
)
from s3proxy import FaultProxy

from nadir.chip.shard import chip_shard
from nadir.config import ConfigError, validate
from nadir.config.catalogue import CATALOGUE
from nadir.core.errors import InputError, NadirError
from nadir.datasets import rareplanes, xview
from nadir.datasets.records import BadInput
from nadir.fetch import fetch_dataset
from nadir.fetch.archives import extract
from nadir.fetch.sources import SourceEntry, fetch_s3
from nadir.index.normalise import index_dataset
from nadir.predict.sources import stac_scenes
from nadir.raster.chip_params import ChipParams
from nadir.raster.opener import image_header
from nadir.storage.controller import ControllerLockError, claim, owner_store, release
from nadir.storage.download import FetchSettings, download
from nadir.storage.urls import publish, redact, redirect_refusal, resolve
from nadir.train.checkpoints import S3Checkpoints

MATRIX: dict[str, Callable] = {}


def case(name: str):
    def register(function: Callable) -> Callable:
        assert name not in MATRIX, name
        MATRIX[name] = function
        return function
    return register


def fast(tmp_path: Path, retries: int = 0, timeout_s: float = 5.0, **limits) -> FetchSettings:
    return FetchSettings(tmp_path / "cache", retries, timeout_s, **limits)


# --- labels: a two-scene DOTA dataset whose train label file holds the case's bytes ---------

GOOD = ("imagesource:GoogleEarth\ngsd:0.5\n2 2 20 2 20 20 2 20 plane 0\n"
        "30 30 50 30 50 50 30 50 ship 1\n")


def index_dota(tmp_path: Path, label: bytes, **policy) -> tuple[dict | None, Path]:
    """Fetch and index a train scene labelled with `label` and a clean val scene; returns
    (index summary, index folder)."""
    for split, text in (("train", label), ("val", GOOD.encode())):
        folder = tmp_path / split
        write_png(folder / "images" / f"{split}0.png", np.full((64, 64, 3), 80, np.uint8))
        (folder / "labelTxt").mkdir(parents=True, exist_ok=True)
        (folder / "labelTxt" / f"{split}0.txt").write_bytes(text)
    spec = {"format": "dota", "version": "v1.0",
            "source": [{"url": str(tmp_path / "train"), "split": "train"},
                       {"url": str(tmp_path / "val"), "split": "val"}],
            "split": {"method": "official", "val_fraction": 0.2, "seed": 0},
            "classes": {"merge": {}, "keep": None, "min_size": 0}, "on_bad_input": policy}
    files = tmp_path / "files"
    (tmp_path / "m.json").write_text(json.dumps(fetch_dataset("d", spec, files, fast(tmp_path))))
    out = tmp_path / "index"
    return index_dataset(tmp_path / "m.json", files, spec, index_tables(out)), out


def expect_label_error(tmp_path: Path, label: bytes, pattern: str, skip_case: str | None):
    """The default policy stops, naming file and line, and leaves the index of an earlier run
    as it was; where a policy can skip the case instead, the skip is counted and the clean
    objects are all kept."""
    earlier = tmp_path / "strict" / "index" / "annotations.csv"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("an earlier run's table\n")
    with pytest.raises(InputError, match=pattern):
        index_dota(tmp_path / "strict", label)
    assert [p.name for p in earlier.parent.iterdir()] == ["annotations.csv"]
    assert earlier.read_text() == "an earlier run's table\n"
    if skip_case:
        summary, _ = index_dota(tmp_path / "lenient", label, **{skip_case: "skip"})
        assert summary["bad_input"]["skipped"][skip_case] == 1
        assert summary["objects_per_class"]["plane"] == 2  # one per scene


def expect_label_ok(tmp_path: Path, label: bytes, train_objects: int, **skipped):
    summary, out = index_dota(tmp_path, label)
    assert summary["objects"] - 2 == train_objects  # val holds 2
    assert {k: v for k, v in summary["bad_input"]["skipped"].items() if v} == skipped
    assert (out / "annotations.csv").exists() and (out / "summary.json").exists()


@case("label-utf8-bom")
def _(tmp_path):
    expect_label_ok(tmp_path, b"\xef\xbb\xbf" + GOOD.encode(), 2)


@case("label-utf16")
def _(tmp_path):
    expect_label_ok(tmp_path, GOOD.encode("utf-16"), 2)


@case("label-latin1")
def _(tmp_path):
    text = GOOD.replace("GoogleEarth", "Géoportail").encode("latin-1")
    expect_label_error(tmp_path, text, r"train0\.txt, line 1: not UTF-8 text", None)


@case("label-nan-coordinate")
def _(tmp_path):
    expect_label_error(tmp_path, (GOOD + "nan 1 5 1 5 5 1 5 ship 0\n").encode(),
                       r"train0\.txt, line 5: coordinates must be finite", "malformed_record")


@case("label-inf-coordinate")
def _(tmp_path):
    expect_label_error(tmp_path, (GOOD + "1 1 inf 1 5 5 1 5 ship 0\n").encode(),
                       r"train0\.txt, line 5: coordinates must be finite", "malformed_record")


@case("label-huge-coordinates")
def _(tmp_path):
    far = "1e30 1e30 2e30 1e30 2e30 2e30 1e30 2e30 ship 0\n"
    expect_label_ok(tmp_path, (GOOD + far).encode(), 2, outside_image=1)


@case("label-duplicate-object")
def _(tmp_path):
    expect_label_ok(tmp_path, (GOOD + "2 2 20 2 20 20 2 20 plane 0\n").encode(), 2,
                    duplicate_object=1)


@case("label-wrong-field-count")
def _(tmp_path):
    expect_label_error(tmp_path, (GOOD + "1 1 5 1 5 5 ship 0\n").encode(),
                       r"train0\.txt, line 5: expected x1 y1", "malformed_record")


@case("label-unknown-class")
def _(tmp_path):
    expect_label_error(tmp_path, (GOOD + "1 1 5 1 5 5 1 5 spaceship 0\n").encode(),
                       r"train0\.txt, line 5: unknown class 'spaceship'", "unknown_class")


@case("label-empty-file")
def _(tmp_path):
    expect_label_ok(tmp_path, b"", 0)


@case("xview-truncated-json")
def _(tmp_path):
    path = tmp_path / "xView_train.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [{"properties": {"image_id": ')
    with pytest.raises(InputError, match=r"xView_train\.geojson: feature 1 is not valid JSON"):
        list(xview.iter_features(path))


@case("xview-bom")
def _(tmp_path):
    path = tmp_path / "xView_train.geojson"
    feature = {"properties": {"image_id": "1.tif", "type_id": 18, "bounds_imcoords": "1,1,9,9"}}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"features": [feature]}).encode())
    counts = xview.XviewCounts()
    objects = list(xview.read_objects(path, {"1.tif": (64, 64)}, BadInput(), counts))
    assert [o.category for o in objects] == ["Small Car"]


# --- images ---------------------------------------------------------------------------------

def chip_params() -> ChipParams:
    return ChipParams(size=64, overlap=0, empty_keep=1.0, image_format="png")


def chip_one(tmp_path: Path, image: Path) -> dict:
    header = image_header(image)
    scene = {"scene": "s", "split": "train", "width": header["width"],
             "height": header["height"]}
    chip_shard([scene], {}, {"s": image}, chip_params(), tmp_path / "s.tar", tmp_path / "s.json")
    return json.loads((tmp_path / "s.json").read_text())


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def noise(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)


@case("image-zero-byte")
def _(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.tif: not a readable raster image"):
        image_header(tmp_path / "empty.tif")


@case("image-truncated-png")
def _(tmp_path):
    write_png(tmp_path / "t.png", noise(200))
    with pytest.raises(InputError, match=r"t\.png: truncated: a complete PNG file ends"):
        image_header(truncated(tmp_path / "t.png"))


@case("image-truncated-jpeg")
def _(tmp_path):
    from PIL import Image

    Image.fromarray(noise(200)).save(tmp_path / "t.jpg")
    with pytest.raises(InputError, match=r"t\.jpg: truncated: a complete JPG file ends"):
        image_header(truncated(tmp_path / "t.jpg"))


@case("image-truncated-tiff")
def _(tmp_path):
    write_geotiff(tmp_path / "t.tif", noise(200))
    with pytest.raises(InputError, match=r"t\.tif: cannot read its pixels .*truncated or "
                                         r"corrupt"):
        chip_one(tmp_path, truncated(tmp_path / "t.tif"))


@case("image-wrong-band-count")
def _(tmp_path):
    write_geotiff(tmp_path / "rgb.tif", noise(64))
    scene = {"scene": "s", "split": "train"}
    params = ChipParams(size=64, overlap=0, bands=(1, 2, 4))
    with pytest.raises(InputError, match=r"rgb\.tif: lacks band\(s\) \[4\] .* it has 3 band"):
        chip_shard([scene], {}, {"s": tmp_path / "rgb.tif"}, params, tmp_path / "s.tar",
                   tmp_path / "s.json")


@case("image-1x1")
def _(tmp_path):
    write_png(tmp_path / "dot.png", np.full((1, 1, 3), 200, np.uint8))
    shard = chip_one(tmp_path, tmp_path / "dot.png")
    [chip] = shard["chips"]
    assert (chip["width"], chip["height"]) == (64, 64) and shard["scenes"]["s"]["width"] == 1


@case("image-100k-px-wide")
def _(tmp_path):
    """A sparse GeoTIFF: the header says 100,000 x 16 px, the file holds no pixel block."""
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "wide.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100_000, height=16, count=3,
                       dtype="uint8", tiled=True, blockxsize=256, blockysize=16,
                       sparse_ok=True, crs="EPSG:32633",
                       transform=from_origin(500_000, 5_000_000, 0.5, 0.5)):
        pass
    assert path.stat().st_size < 1_000_000
    assert image_header(path)["width"] == 100_000


@case("image-without-georeferencing")
def _(tmp_path):
    (tmp_path / "t.geojson").write_text('{"features": []}')
    with pytest.raises(InputError, match=r"t\.geojson: its image has no georeferencing"):
        rareplanes.read_objects(tmp_path / "t.geojson", "role", None, None, BadInput())


def tile_with_sidecar(folder: Path, sidecar: bytes | None) -> Path:
    """A RarePlanes-like PNG tile whose `.aux.xml` holds `sidecar` (GDAL's own when None)."""
    from dataset_builders import write_pam_png
    from rasterio.transform import from_origin

    png = folder / "PS-RGB_tiled" / "t1.png"
    write_pam_png(png, np.full((16, 16, 3), 90, np.uint8),
                  from_origin(-80.0, 26.0, 3e-6, 3e-6), "EPSG:4326")
    if sidecar is not None:
        Path(f"{png}.aux.xml").write_bytes(sidecar)
    return png


@case("sidecar-not-xml")
def _(tmp_path):
    png = tile_with_sidecar(tmp_path, b"<PAMDataset><SRS>EPSG:4326</SRS><GeoTr")
    with pytest.raises(InputError, match=r"t1\.png\.aux\.xml: not a readable GDAL \.aux\.xml"):
        image_header(png)


@case("sidecar-entity-declaration")
def _(tmp_path):
    sidecar = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">]>'
               b"<PAMDataset><SRS>&a;</SRS></PAMDataset>")
    png = tile_with_sidecar(tmp_path, sidecar)
    with pytest.raises(InputError, match=r"t1\.png\.aux\.xml: .* DOCTYPE or ENTITY .* refused"):
        image_header(png)
    huge = tile_with_sidecar(tmp_path / "huge", b"<PAMDataset>" + b" " * (1 << 20))
    with pytest.raises(InputError, match=r"larger than 1048576 bytes"):
        image_header(huge)


@case("sidecar-bad-geotransform")
def _(tmp_path):
    png = tile_with_sidecar(tmp_path, b"<PAMDataset><SRS>EPSG:4326</SRS><GeoTransform>1, 0, 0,"
                                      b" 2, 0, 0</GeoTransform></PAMDataset>")
    with pytest.raises(InputError, match=r"GeoTransform .* does not map pixels"):
        image_header(png)


@case("rareplanes-role-id-conflict")
def _(tmp_path):
    transform = [3e-6, 0, -80.0, 0, -3e-6, 26.0]
    ring = [[-80.0 + 3e-5, 26.0 - 3e-5], [-80.0 + 6e-5, 26.0 - 3e-5],
            [-80.0 + 6e-5, 26.0 - 6e-5], [-80.0 + 3e-5, 26.0 - 3e-5]]
    features = [{"type": "Feature", "properties": {"role": "Military Trainer", "role_id": i},
                 "geometry": {"type": "Polygon", "coordinates": [ring]}} for i in (7, 5)]
    label = tmp_path / "t1.geojson"
    label.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    objects = rareplanes.read_objects(label, "role", "EPSG:4326", transform, BadInput())
    with pytest.raises(InputError, match=r"t1\.geojson: feature 2: role 'Military Trainer' "
                                         r"with role_id 5; earlier features give 'Military "
                                         r"Trainer' the id 7"):
        rareplanes.class_ids({str(label): objects}, "role")


@case("image-same-name-twice")
def _(tmp_path):
    """An identical copy (the DOTA Drive's train/images/1/part1.zip) is set aside; two
    different images of one scene name stop the fetch naming both."""
    for folder, value in (("a", 10), ("a/1", 10), ("b", 99)):
        write_png(tmp_path / "src" / folder / "images" / "P1.png",
                  np.full((8, 8, 3), value, np.uint8))
    (tmp_path / "src" / "a" / "labelTxt").mkdir()
    (tmp_path / "src" / "a" / "labelTxt" / "P1.txt").write_text("")
    spec = {"format": "dota", "version": "v1.0",
            "source": [{"url": str(tmp_path / "src" / "a"), "split": "train"}]}
    manifest = fetch_dataset("d", spec, tmp_path / "files", fast(tmp_path))
    assert [s["image"] for s in manifest["scenes"]] == ["00-train/images/P1.png"]
    assert manifest["set_aside"]["copies"] == [{"file": "00-train/1/images/P1.png",
                                                "same_as": "00-train/images/P1.png"}]
    spec["source"].append({"url": str(tmp_path / "src" / "b"), "split": "train"})
    with pytest.raises(InputError, match=r"01-train/images/P1\.png: scene name 'P1' is also "
                                         r"used by 00-train/images/P1\.png"):
        fetch_dataset("d", spec, tmp_path / "files2", fast(tmp_path))


@case("xview-empty-box-forms")
def _(tmp_path):
    from dataset_builders import xview_feature

    missing = xview_feature("1.tif", 73, "")
    del missing["properties"]["bounds_imcoords"]
    features = [xview_feature("1.tif", 73, ""), xview_feature("1.tif", 73, []), missing,
                xview_feature("1.tif", 73, "  ")]
    path = tmp_path / "x.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    counts = xview.XviewCounts()
    assert list(xview.read_objects(path, {"1.tif": (64, 64)}, BadInput(), counts)) == []
    assert counts.dropped == {"empty_box": 4}


# --- untrusted input (docs/security.md): names, rasters, weights ----------------------------

@case("name-runs-a-command")
def _(tmp_path, monkeypatch):
    """The attack of issue 25: `P0001$(touch PWNED).png` in a DOTA zip. fetch stops naming
    the file; nothing runs (no PWNED file anywhere), no manifest is written (its run through
    Snakemake: tests/test_security.py)."""
    monkeypatch.chdir(tmp_path)
    sources = hostile.hostile_dota(tmp_path / "data")
    spec = {"format": "dota", "version": "v1.5", "source": [
        {"url": str(sources["train"]), "split": "train"},
        {"url": str(sources["val"]), "split": "val"}]}
    with pytest.raises(InputError, match=r"images/P0001\$\(touch PWNED\)\.png: file name "
                                         r"'00-train/hostile/images/P0001\$\(touch PWNED\)\.png'"
                                         r" is refused"):
        fetch_dataset("d", spec, tmp_path / "files", fast(tmp_path))
    assert not list(tmp_path.rglob("PWNED"))


@case("image-vrt-as-tif")
def _(tmp_path):
    """A `.tif` that is VRT XML reading a local file, or a URL: the index, chipping and
    inference (local, and over HTTP) refuse it naming the file, and the URL is never asked."""
    listener = hostile.listener(tmp_path / "listener")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x07" * 64 * 64)
    served = tmp_path / "served"
    served.mkdir()
    try:
        for name, target in (("local.tif", str(secret)),
                             ("remote.tif", f"/vsicurl/{listener.url}/latest/meta-data")):
            (served / name).write_text(hostile.pointing_vrt(target))
            evil = served / name
            refused = rf"{name}: not a readable raster image: opened as GTiff only, by its " \
                      r"suffix; it holds XML, e\.g\. a GDAL VRT"
            for stage in (image_header, lambda image: hostile.chip_scene(tmp_path, image),
                          hostile.read_scene):
                with pytest.raises(InputError, match=refused):
                    stage(evil)
        scenes = FileServer(served)
        try:
            with pytest.raises(InputError, match=r"remote\.tif: not a readable raster image: "
                                                 r"opened as GTiff only"):
                hostile.read_scene(f"{scenes.url}/remote.tif")
        finally:
            scenes.stop()
        assert listener.requests == []
    finally:
        listener.stop()
    assert b"\x07" * 64 not in (tmp_path / "s.tar").read_bytes()  # no chip of the secret


@case("image-vrt-sidecar")
def _(tmp_path):
    """GDAL opens a GeoTIFF's `.ovr` and `.msk` with whatever driver their content asks for,
    even when the GeoTIFF itself is opened as GTiff only. Plain rasterio (in a fresh process,
    the control) asks the URL in the `.ovr` when it reads decimated pixels; nadir's opener,
    even after rasterio registered GDAL's drivers first, drops the VRT driver, and chipping a
    16-bit scene (whose stretch reads decimated pixels) never asks it."""
    import subprocess
    import sys

    import rasterio

    listener = hostile.listener(tmp_path / "listener")
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=2100, height=64, count=3,
                       dtype="uint16") as dst:
        dst.write(np.full((3, 64, 2100), 1000, np.uint16))
    (tmp_path / "scene.tif.ovr").write_text(hostile.pointing_vrt(
        f"/vsicurl/{listener.url}/ovr", 1050, 32, bands=3, dtype="UInt16"))
    (tmp_path / "scene.tif.msk").write_text(hostile.pointing_vrt(
        f"/vsicurl/{listener.url}/msk", 2100, 64))
    script = f"""
import rasterio, sys
with rasterio.open({str(scene)!r}, driver="GTiff") as src:
    src.read(1, out_shape=(21, 700))
sys.path.insert(0, {str(ROOT / "src")!r})
from nadir.raster.opener import DATASET_IMAGE, KEPT_DRIVERS, open_raster
with open_raster({str(scene)!r}, DATASET_IMAGE) as src:
    src.read(1, out_shape=(21, 700)), src.dataset_mask()
from rasterio import _env
print(sorted(_env.GDALEnv().drivers()) == sorted(KEPT_DRIVERS))
"""
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120)
        assert proc.stdout.strip() == "True", proc.stderr
        asked = [path for path, _ in listener.requests]
        assert asked and set(asked) == {"/ovr"}, asked  # the control only
        listener.requests.clear()
        hostile.chip_scene(tmp_path, scene)
        assert listener.requests == []
    finally:
        listener.stop()


@case("image-declared-huge")
def _(tmp_path):
    """A sparse GeoTIFF of a few hundred bytes declaring 10^7 x 10^7 px: the fetch (which
    reads every image's header for the index), chipping and inference stop at its header,
    naming the limit and its key."""
    huge = hostile.sparse_geotiff(tmp_path / "huge.tif")
    assert huge.stat().st_size < 10_000
    too_big = (r"huge\.tif: declares 10000000 x 10000000 px x 3 band\(s\) = "
               r"300,000,000,000,000 values, above the limit of 1,000,000,000,000 \(config key "
               r"rasters\.max_values\)")
    placed = tmp_path / "placed"
    (placed / "images").mkdir(parents=True)
    (placed / "labelTxt").mkdir()
    (placed / "images" / "huge.tif").write_bytes(huge.read_bytes())
    (placed / "labelTxt" / "huge.txt").write_text("")
    spec = {"format": "dota", "version": "v1.0", "source": [{"url": str(placed),
                                                               "split": "train"}]}
    with pytest.raises(InputError, match=too_big):
        fetch_dataset("d", spec, tmp_path / "files", fast(tmp_path))
    for stage in (lambda image: hostile.chip_scene(tmp_path, image), hostile.read_scene):
        with pytest.raises(InputError, match=too_big):
            stage(huge)
    write_geotiff(tmp_path / "small.tif", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match=r"300 values, above the limit of 299 \(config key "
                                         r"rasters\.max_values\)"):
        image_header(tmp_path / "small.tif", max_raster_values=299)
    assert image_header(tmp_path / "small.tif", max_raster_values=300)["width"] == 10


CORRUPT_TILE = (r"c\.tif: cannot read its pixels in window x 128-192, y 64-128 \(pixel "
                r"offsets\) of scene {scene}; GDAL: .+\. The file is truncated or corrupt")


@case("image-corrupt-tile")
def _(tmp_path):
    image = hostile.corrupt_tile(tmp_path / "c.tif")
    with pytest.raises(InputError, match=CORRUPT_TILE.format(scene="s")):
        hostile.chip_scene(tmp_path, image)


@case("inference-corrupt-tile")
def _(tmp_path):
    image = hostile.corrupt_tile(tmp_path / "c.tif")
    with pytest.raises(InputError, match=CORRUPT_TILE.format(scene="scene")):
        hostile.read_scene(image)


@case("weights-pickle-payload")
def _(tmp_path):
    """A weights file whose pickle runs `touch` when unpickled (tests/test_security.py shows
    that a plain unpickler does run it): refused for torchvision's ImageNet backbones (its own
    detection builders and the trunks nadir builds on), COCO weights and YOLOX, naming the
    file; nothing runs."""
    from nadir.train.models import build_detector

    marker = tmp_path / "ran"
    weights = hostile.torch_payload(tmp_path / "weights.pth", marker)
    for model, pretrained in (("fcos_resnet18_fpn", "imagenet"),
                              ("ssdlite320_mobilenet_v3_large", "imagenet"),
                              ("fasterrcnn_resnet50_fpn_v2", "coco"), ("yolox_s", "coco")):
        with pytest.raises(InputError, match=r"weights\.pth: refused: it holds pickled "
                                             r"objects other than tensors and plain data"):
            build_detector(model, 2, 64, pretrained, weights)
    assert not marker.exists()


@case("weights-changed-since-download")
def _(tmp_path):
    """fetch_weights records the digest beside the file; a training job refuses the file once
    it differs (replaced in shared storage), or when the record is missing."""
    import tiny_chips

    from nadir.train.runner import run
    from nadir.train.weights import fetch_weights, verify_recorded

    served = tmp_path / "served"
    served.mkdir()
    (served / "w.pth").write_bytes(b"the weights as published")
    server = FileServer(served)
    try:
        weights = tmp_path / "weights" / "resnet18-f37072fd.pth"
        record = fetch_weights(f"{server.url}/w.pth", None, weights)
    finally:
        server.stop()
    assert verify_recorded(weights, None) == record["sha256"]
    weights.write_bytes(b"the weights as replaced")
    with pytest.raises(InputError, match=rf"resnet18-f37072fd\.pth: SHA-256 \w+ is not the "
                                         rf"{record['sha256']} recorded when it was fetched"):
        verify_recorded(weights, None)
    data = tiny_chips.build(tmp_path / "chips", chips=2)
    job = tiny_chips.train_job(data, "fcos_resnet18_fpn",
                               tiny_chips.hyperparameters(pretrained="imagenet"),
                               tmp_path / "out", weights_file=weights)
    with pytest.raises(InputError, match="recorded when it was fetched"):
        run(job)
    assert not (tmp_path / "out" / "model.pt").exists()
    Path(f"{weights}.json").unlink()
    with pytest.raises(InputError, match=r"resnet18-f37072fd\.pth\.json: no readable download "
                                         r"record .*nadir fetch-weights"):
        verify_recorded(weights, None)


@case("shard-shorter-than-its-chip-list")
def _(tmp_path, s3, monkeypatch):
    """A shard that is not the one its chip list describes (cut short, replaced, or gone),
    read from local disk or streamed from S3: the chip's error names the shard and the chip."""
    import tiny_chips

    from nadir.train.data import ShardChips

    data = tiny_chips.build(tmp_path / "chips", chips=2)
    whole = data["shard"].read_bytes()
    data["shard"].write_bytes(whole[:len(whole) // 2])  # the second chip's bytes are gone
    client = s3.client()
    client.create_bucket(Bucket="nadir-fault-shards")
    client.upload_file(str(data["shard"]), "nadir-fault-shards", "chips/shard-000.tar")
    monkeypatch.setenv("NADIR_STORAGE_S3_ENDPOINT", s3.endpoint)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    for location in (str(data["shard"]), "s3://nadir-fault-shards/chips/shard-000.tar"):
        chips = ShardChips(data["coco"], [location])
        chips[0]  # the first chip is whole
        with pytest.raises(InputError, match=r"shard-000\.tar: chip chip-001\.png (lies at "
                                             r"bytes \d+\.\.\d+, beyond|is cut short)"):
            chips[1]
    with pytest.raises(InputError, match=r"shard-009\.tar: cannot read this shard \(404\)"):
        ShardChips(data["coco"], ["s3://nadir-fault-shards/chips/shard-009.tar"])[0]


# --- archives -------------------------------------------------------------------------------

def expect_archive_error(tmp_path: Path, archive: Path, pattern: str) -> None:
    dest = tmp_path / "out"
    with pytest.raises(InputError, match=pattern):
        extract(archive, dest)
    assert not dest.exists() and not (tmp_path / "out.partial").exists()
    assert not (tmp_path / "evil.txt").exists()


def valid_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def tar_with(path: Path, add: Callable[[tarfile.TarFile], None], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        add(tf)
    return path


def add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@case("archive-corrupt-zip")
def _(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    expect_archive_error(tmp_path, tmp_path / "bad.zip", r"bad\.zip: not a readable archive")


@case("archive-truncated-zip")
def _(tmp_path):
    archive = valid_zip(tmp_path / "t.zip", {"a.png": bytes(range(256)) * 400})
    expect_archive_error(tmp_path, truncated(archive), r"t\.zip: not a readable archive")


@case("archive-corrupt-tar")
def _(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"\x01" * 3000)
    expect_archive_error(tmp_path, tmp_path / "bad.tar", r"bad\.tar: not a readable archive")


@case("archive-truncated-tar-gz")
def _(tmp_path):
    rng = np.random.default_rng(1)
    archive = tar_with(tmp_path / "t.tar.gz", lambda tf: [
        add_file(tf, f"images/{i}.png", rng.bytes(20_000)) for i in range(4)], "w:gz")
    expect_archive_error(tmp_path, truncated(archive), r"t\.tar\.gz: not a readable archive")


@case("archive-zip-entry-escaping")
def _(tmp_path):
    archive = valid_zip(tmp_path / "evil.zip", {"ok.txt": b"1", "../evil.txt": b"2"})
    expect_archive_error(tmp_path, archive, r"evil\.zip: member '\.\./evil\.txt' leads outside")


@case("archive-tar-entry-escaping")
def _(tmp_path):
    archive = tar_with(tmp_path / "evil.tar", lambda tf: add_file(tf, "../evil.txt", b"2"))
    expect_archive_error(tmp_path, archive, r"evil\.tar: member '\.\./evil\.txt' leads outside")


@case("archive-tar-link-escaping")
def _(tmp_path):
    def add(tf):
        link = tarfile.TarInfo("evil.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    expect_archive_error(tmp_path, tar_with(tmp_path / "link.tar", add),
                         r"link\.tar: member 'evil\.txt' refused: .*absolute path")


@case("archive-nested")
def _(tmp_path):
    """DOTA's downloads wrap part archives in another one: the inner ones are extracted too."""
    inner = valid_zip(tmp_path / "part1.zip", {"images/P0001.png": b"png"})
    outer = valid_zip(tmp_path / "DOTA.zip", {"train/part1.zip": inner.read_bytes()})
    extract(outer, tmp_path / "out")
    assert (tmp_path / "out" / "train" / "part1" / "images" / "P0001.png").read_bytes() == b"png"
    assert not list((tmp_path / "out").rglob("*.zip"))


@case("archive-nested-too-deep")
def _(tmp_path):
    archive = valid_zip(tmp_path / "a.zip", {"x.txt": b"x"})
    for depth in range(3):
        archive = valid_zip(tmp_path / f"n{depth}.zip", {archive.name: archive.read_bytes()})
    expect_archive_error(tmp_path, archive, r"nested more than 3 deep")


@case("archive-member-absolute")
def _(tmp_path):
    archive = valid_zip(tmp_path / "abs.zip", {str(tmp_path / "evil.txt"): b"2"})
    expect_archive_error(tmp_path, archive, r"abs\.zip: member '/.*/evil\.txt' leads outside")


@case("archive-tar-hardlink-escaping")
def _(tmp_path):
    (tmp_path / "victim.txt").write_text("the user's")

    def add(tf):
        link = tarfile.TarInfo("innocent.txt")
        link.type, link.linkname = tarfile.LNKTYPE, "../victim.txt"
        tf.addfile(link)
    expect_archive_error(tmp_path, tar_with(tmp_path / "hard.tar", add),
                         r"hard\.tar: member 'innocent\.txt' refused")
    assert (tmp_path / "victim.txt").read_text() == "the user's"


def expect_bomb_stopped(tmp_path: Path, bomb: Callable[[Path], Path], name: str,
                        monkeypatch) -> None:
    """0.4 MB expanding to 400 MiB against the default caps: stopped before the member is
    written (the extraction folder's size is measured as it is removed)."""
    archive = bomb(tmp_path / name)
    removed = []
    real_rmtree = shutil.rmtree

    def measured_rmtree(path, *args, **kwargs):
        if Path(path).exists():
            removed.append(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", measured_rmtree)
    expect_archive_error(tmp_path, archive, rf"{re.escape(name)}: member 'bomb\.bin' would "
                                            r"expand .* past fetch\.max_expansion_ratio \(200 "
                                            r"times\): a compression bomb")
    assert archive.stat().st_size < 500_000 and removed == [0]


@case("archive-zip-bomb")
def _(tmp_path, monkeypatch):
    expect_bomb_stopped(tmp_path, zip_bomb, "bomb.zip", monkeypatch)


@case("archive-tar-gz-bomb")
def _(tmp_path, monkeypatch):
    expect_bomb_stopped(tmp_path, tar_gz_bomb, "bomb.tar.gz", monkeypatch)


@case("archive-too-many-members")
def _(tmp_path):
    archive = valid_zip(tmp_path / "many.zip", {f"f{i:02d}.txt": b"x" for i in range(20)})
    with pytest.raises(InputError, match=r"many\.zip: member 'f10\.txt' is one more than "
                                         r"fetch\.max_archive_members \(10\); .*raise that key"):
        extract(archive, tmp_path / "out", FetchSettings(max_archive_members=10))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@case("archive-too-many-bytes")
def _(tmp_path):
    archive = valid_zip(tmp_path / "big.zip", {f"f{i}.bin": bytes(1000) for i in range(5)})
    with pytest.raises(InputError, match=r"big\.zip: member 'f3\.bin' would take the extracted "
                                         r"bytes past fetch\.max_extracted_bytes \(3500\)"):
        extract(archive, tmp_path / "out", FetchSettings(max_extracted_bytes=3_500))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# --- configs --------------------------------------------------------------------------------

def expect_config_error(edit: dict, pattern: str) -> None:
    config = {"datasets": {"d": {"format": "sample"}},
              "models": {"ssdlite320_mobilenet_v3_large": {}}, **edit}
    with pytest.raises(ConfigError, match=pattern):
        validate(config, list(CATALOGUE))


@case("config-unknown-key")
def _(tmp_path):
    expect_config_error({"training": {"iterationz": 5}}, r"config key training: unknown key")


@case("config-key-not-for-the-format")
def _(tmp_path):
    expect_config_error({"datasets": {"d": {"format": "sample", "tiled": False}}},
                        r"config key datasets\.d\.tiled: does not apply to format")


@case("config-key-renamed")
def _(tmp_path):
    expect_config_error({"report": {"min_score": 0.5}},
                        r"config key report\.min_score was replaced by inference\.score_threshold")


@case("config-warmup-longer-than-training")
def _(tmp_path):
    expect_config_error({"training": {"iterations": 10, "warmup_iterations": 20}},
                        r"config key training\.warmup_iterations")


@case("config-overlap-not-below-size")
def _(tmp_path):
    expect_config_error({"chipping": {"size": 64, "overlap": 64}},
                        r"config key chipping\.overlap")


# --- HTTP: the fault-injecting FileServer on 127.0.0.1 ----------------------------------------

PAYLOAD = bytes(range(256)) * 1_000  # 256,000 bytes


def serve(tmp_path: Path, **faults) -> FileServer:
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    (root / "data.bin").write_bytes(PAYLOAD)
    return FileServer(root, **faults)


def expect_download_error(tmp_path: Path, server: FileServer, pattern: str,
                          path: str = "/data.bin", **settings) -> Path:
    dest = tmp_path / "cache" / "data.bin"
    with pytest.raises(NadirError, match=pattern):
        download(server.url + path, dest, None, fast(tmp_path, **settings))
    assert not dest.exists()
    return dest


def rerun_gives_the_payload(tmp_path: Path, server: FileServer) -> None:
    dest = tmp_path / "cache" / "data.bin"
    download(f"{server.url}/data.bin", dest, None, fast(tmp_path))
    assert dest.read_bytes() == PAYLOAD
    assert not list(dest.parent.glob("*.part*"))


@case("http-404")
def _(tmp_path):
    server = serve(tmp_path)
    try:
        expect_download_error(tmp_path, server, r"HTTP 404 .*not retried", "/missing.bin",
                              retries=3)
        assert len(server.requests) == 1
    finally:
        server.stop()


@case("http-500-then-ok")
def _(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)  # the back-off, not the subject here
    server = serve(tmp_path, script=[500, 500])
    try:
        download(f"{server.url}/data.bin", tmp_path / "d.bin", None, fast(tmp_path, retries=2))
        assert (tmp_path / "d.bin").read_bytes() == PAYLOAD and len(server.requests) == 3
    finally:
        server.stop()


@case("http-500-always")
def _(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    server = serve(tmp_path, script=[500] * 3)
    try:
        expect_download_error(tmp_path, server, r"still failing after 3 attempt\(s\): HTTP "
                                                r"Error 500", retries=2)
        rerun_gives_the_payload(tmp_path, server)
    finally:
        server.stop()


@case("http-dropped-mid-body")
def _(tmp_path):
    server = serve(tmp_path, drop_after=100_000)
    try:
        dest = expect_download_error(tmp_path, server, r"connection closed after 100000 of "
                                                       r"256000 bytes")
        assert [p.stat().st_size for p in part_files(dest)] == [100_000]  # kept to resume
        rerun_gives_the_payload(tmp_path, server)
        assert server.requests[-1] == ("/data.bin", "bytes=100000-")
    finally:
        server.stop()


@case("http-stalled-server")
def _(tmp_path):
    server = serve(tmp_path, script=["stall"], stall_s=3.0)
    try:
        expect_download_error(tmp_path, server, r"timed out", timeout_s=0.5)
        rerun_gives_the_payload(tmp_path, server)
    finally:
        server.stop()


@case("http-announced-length-never-arrives")
def _(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    server = serve(tmp_path, drop_after=1_000, script=["drop"] * 3)
    try:
        expect_download_error(tmp_path, server, r"closed after 3000 of 256000 bytes", retries=2)
        rerun_gives_the_payload(tmp_path, server)
    finally:
        server.stop()


@case("http-file-changed-between-attempts")
def _(tmp_path):
    server = serve(tmp_path, drop_after=100_000, if_range=False)
    try:
        expect_download_error(tmp_path, server, r"closed after 100000")
        (tmp_path / "www" / "data.bin").write_bytes(PAYLOAD[::-1])
        dest = tmp_path / "cache" / "data.bin"
        download(f"{server.url}/data.bin", dest, None, fast(tmp_path, retries=1))
        assert dest.read_bytes() == PAYLOAD[::-1]
    finally:
        server.stop()


@case("http-body-without-length-past-cap")
def _(tmp_path):
    server = serve(tmp_path, announce=lambda n: None)
    try:
        expect_download_error(tmp_path, server, r"sends a body without Content-Length, more "
                              r"than fetch\.max_download_bytes \(100000\)",
                              max_download_bytes=100_000)
        assert not part_files(tmp_path / "cache" / "data.bin")
        rerun_gives_the_payload(tmp_path, server)  # within the default cap
    finally:
        server.stop()


@case("http-announced-length-past-cap")
def _(tmp_path):
    server = serve(tmp_path, announce=lambda n: 10 ** 13)
    try:
        expect_download_error(tmp_path, server, r"announces 10000000000000 bytes, more than "
                              r"fetch\.max_download_bytes \(1000000000000\)")
        assert not part_files(tmp_path / "cache" / "data.bin")
    finally:
        server.stop()


@case("http-body-longer-than-announced")
def _(tmp_path):
    """Only the announced bytes are read; the configured digest then refuses them."""
    server = serve(tmp_path, announce=lambda n: n // 2)
    dest = tmp_path / "cache" / "data.bin"
    try:
        with pytest.raises(InputError, match="SHA-256 mismatch"):
            download(f"{server.url}/data.bin", dest, hashlib.sha256(PAYLOAD).hexdigest(),
                     fast(tmp_path))
        assert not dest.exists() and not part_files(dest)
    finally:
        server.stop()


@case("http-redirect-https-to-http")
def _(tmp_path, monkeypatch):
    """A local TLS server (its certificate trusted through SSL_CERT_FILE) redirects to plain
    http: refused before a request goes out in clear. Redirected to https instead, the
    download goes through (the refusal is the redirect's, not the certificate's)."""
    certificate = self_signed(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    plain = serve(tmp_path)
    secure = Redirecting(certificate, f"{plain.url}/data.bin", PAYLOAD)
    try:
        with pytest.raises(NadirError, match=r"redirects to http://127\.0\.0\.1:\d+/data\.bin, "
                                             r"refused because it leaves https for http"):
            download(f"{secure.url}/data.bin", tmp_path / "d.bin", None, fast(tmp_path))
        assert plain.requests == [] and not (tmp_path / "d.bin").exists()
        secure.httpd.location = f"{secure.url}/final"
        download(f"{secure.url}/data.bin", tmp_path / "d.bin", None, fast(tmp_path))
        assert (tmp_path / "d.bin").read_bytes() == PAYLOAD
    finally:
        secure.stop()
        plain.stop()


@case("http-redirect-to-private-address")
def _(tmp_path):
    server = serve(tmp_path)
    server.redirects["/data.bin"] = "http://169.254.169.254/latest/meta-data/"
    try:
        assert "non-public address 169.254.169.254" in redirect_refusal(
            "http://8.8.8.8/data.bin", server.redirects["/data.bin"])
        # a private host (this test server) may redirect within private addresses
        server.redirects["/data.bin"] = f"{server.url}/moved.bin"
        (tmp_path / "www" / "moved.bin").write_bytes(PAYLOAD)
        download(f"{server.url}/data.bin", tmp_path / "d.bin", None, fast(tmp_path))
        assert (tmp_path / "d.bin").read_bytes() == PAYLOAD
    finally:
        server.stop()


@case("http-same-url-two-processes")
def _(tmp_path):
    """Two processes download one 2 MiB URL at the same moment (before the lock: one 4 MiB
    file accepted). One downloads, the other waits and finds the file."""
    digests, requests, left = fetch_in_two_processes(tmp_path, "dataset")
    assert len(set(digests)) == 1 and requests == 1 and left == ["f.bin"]


# --- S3: the real SeaweedFS server, alone or behind a fault-injecting proxy --------------------

@pytest.fixture(scope="module")
def restartable_s3(tmp_path_factory):
    """A SeaweedFS server of this module's own, which a case may stop and start again."""
    server = s3server.start(tmp_path_factory.mktemp("weed-faults"))
    server.client().create_bucket(Bucket="scenes")
    yield server
    server.stop()


def private_entry(prefix: str, endpoint: str) -> SourceEntry:
    return SourceEntry(f"s3://{prefix}", endpoint_url=endpoint, anonymous=False)


def with_credentials(server, monkeypatch) -> None:
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)


@case("s3-wrong-endpoint")
def _(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = SourceEntry("s3://scenes/x/", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(NadirError, match=r"listing s3://scenes/x/: Could not connect .*check "
                                         r"the endpoint_url"):
        fetch_s3(entry, tmp_path / "d", lambda rel: "image", fast(tmp_path, timeout_s=2))
    assert not (tmp_path / "d").exists()


@case("s3-access-denied")
def _(tmp_path, s3):
    s3.client().create_bucket(Bucket="denied")
    s3.client().put_object(Bucket="denied", Key="x/a.tif", Body=b"a")
    entry = SourceEntry("s3://denied/x/", endpoint_url=s3.endpoint)  # anonymous
    with pytest.raises(NadirError, match=r"AccessDenied \(for a public bucket"):
        fetch_s3(entry, tmp_path / "d", lambda rel: "image", fast(tmp_path))


@case("s3-missing-bucket")
def _(tmp_path, s3, monkeypatch):
    with_credentials(s3, monkeypatch)
    with pytest.raises(NadirError, match=r"listing s3://no-such-bucket/x/: NoSuchBucket"):
        fetch_s3(private_entry("no-such-bucket/x/", s3.endpoint), tmp_path / "d",
                 lambda rel: "image", fast(tmp_path))


@case("s3-server-stopped-mid-run")
def _(tmp_path, restartable_s3, monkeypatch):
    """SeaweedFS stops while the third of six objects is requested: the fetch stops with a
    named error, keeps what it completed (in the cache), and once the server is started again
    a rerun fetches only the rest and ends with exactly the bucket's objects."""
    server = restartable_s3
    with_credentials(server, monkeypatch)
    objects = {f"run/{i}.tif": bytes([i]) * (1000 + i) for i in range(6)}
    for key, body in objects.items():
        server.client().put_object(Bucket="scenes", Key=key, Body=body)
    proxy = FaultProxy(server.endpoint)
    gets = []

    def stop_at_the_third_object(method, path):
        if method == "GET" and "/run/" in path:
            gets.append(path)
            if len(gets) == 3:
                server.stop()

    proxy.before = stop_at_the_third_object
    entry = private_entry("scenes/run/", proxy.endpoint)
    settings = fast(tmp_path, retries=1, timeout_s=2)
    try:
        with pytest.raises(NadirError, match=r"download of s3://scenes/run/2\.tif: .*gave up"):
            fetch_s3(entry, tmp_path / "first", lambda rel: "image", settings)
        done = sorted(p.name for p in (tmp_path / "first").iterdir())
        assert done == ["0.tif", "1.tif"]  # complete files only
        server.restart()
        proxy.before = None
        seen_before_rerun = len(proxy.seen)
        fetch_s3(entry, tmp_path / "rerun", lambda rel: "image", settings)
        rerun_gets = [p for m, p in proxy.seen[seen_before_rerun:] if m == "GET" and "/run/" in p]
    finally:
        proxy.stop()
        if server.process.poll() is not None:
            server.restart()
    assert {f"run/{p.name}": p.read_bytes() for p in (tmp_path / "rerun").iterdir()} == objects
    assert sorted(rerun_gets) == [f"/scenes/run/{i}.tif" for i in range(2, 6)]  # not 0, 1


@case("s3-500-during-upload")
def _(tmp_path, restartable_s3, monkeypatch):
    """A checkpoint upload answered with a 500 is retried by botocore and lands whole; a 500
    on every attempt is a named error and leaves no checkpoint listed."""
    server = restartable_s3
    monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_ACCESS_KEY", server.access_key)
    monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_SECRET_KEY", server.secret_key)
    proxy = FaultProxy(server.endpoint)
    try:
        proxy.faults = [("PUT", "/scenes/ck/", "500")]
        store = S3Checkpoints("scenes", "ck", proxy.endpoint)
        store.write(10, b"state" * 1000)
        assert store.read(10) == b"state" * 1000 and proxy.count("PUT") == 2
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        proxy.faults = [("PUT", "/scenes/ck/", "500")]
        with pytest.raises(NadirError, match=r"cannot write ckpt-000000020\.pt to s3://scenes/ck"):
            S3Checkpoints("scenes", "ck", proxy.endpoint).write(20, b"later")
        assert store.iterations() == [10]
    finally:
        proxy.stop()


@case("s3-body-cut-mid-stream")
def _(tmp_path, restartable_s3, monkeypatch):
    server = restartable_s3
    with_credentials(server, monkeypatch)
    server.client().put_object(Bucket="scenes", Key="cut/a.tif", Body=b"a" * 5_000)
    proxy = FaultProxy(server.endpoint)
    try:
        proxy.faults = [("GET", "/scenes/cut/a.tif", "cut")]
        entry = private_entry("scenes/cut/", proxy.endpoint)
        fetch_s3(entry, tmp_path / "d", lambda rel: "image", fast(tmp_path, retries=1))
        assert (tmp_path / "d" / "a.tif").read_bytes() == b"a" * 5_000
        proxy.faults = [("GET", "/scenes/cut/a.tif", "cut")] * 2
        with pytest.raises(NadirError, match=r"download of s3://scenes/cut/a\.tif: .*gave up"):
            fetch_s3(entry, tmp_path / "e", lambda rel: "image",
                     FetchSettings(tmp_path / "other-cache", 1, 5))
        assert not (tmp_path / "e" / "a.tif").exists()
    finally:
        proxy.stop()


def expect_key_refused(tmp_path: Path, server, prefix: str, shown: str) -> None:
    """A listing (through a proxy) shows a stored key as `shown`: the fetch is refused naming
    the key and the bucket, and no object is downloaded."""
    server.client().put_object(Bucket="scenes", Key=f"{prefix}x.tif", Body=b"attacker's bytes")
    proxy = FaultProxy(server.endpoint)
    proxy.listed_as = {f"{prefix}x.tif": shown}
    (tmp_path / "victim.txt").write_text("the user's")
    try:
        with pytest.raises(InputError, match=rf"s3://scenes: key {re.escape(repr(shown))} leads "
                                             r"outside"):
            fetch_s3(private_entry(f"scenes/{prefix}", proxy.endpoint), tmp_path / "d",
                     lambda rel: "image", fast(tmp_path))
    finally:
        proxy.stop()
    assert [p for m, p in proxy.seen if "list-type" not in p] == []
    assert (tmp_path / "victim.txt").read_text() == "the user's"
    assert not (tmp_path / "d").exists()


@case("s3-key-escaping")
def _(tmp_path, restartable_s3, monkeypatch):
    with_credentials(restartable_s3, monkeypatch)
    expect_key_refused(tmp_path, restartable_s3, "keys/", f"keys/{tmp_path / 'victim.txt'}")


@case("s3-key-escaping-empty-prefix")
def _(tmp_path, restartable_s3, monkeypatch):
    """With an empty prefix the key itself is the path, in the cache as in the folder."""
    with_credentials(restartable_s3, monkeypatch)
    expect_key_refused(tmp_path, restartable_s3, "", str(tmp_path / "victim.txt"))


# --- controllers: one per results location (nadir.storage.controller) ------------------------

OTHER_CONTROLLER = {"id": "0" * 32, "host": "gpu-login-2", "pid": 4242, "user": "alice",
                    "workdir": "/home/alice/nadir", "started": "2026-12-07T09:00:00+00:00"}


@case("controller-second-on-prefix")
def _(tmp_path, monkeypatch):
    """Another machine's controller owns the folder (or S3 prefix): stopped, naming it, until
    the user says it is gone (NADIR_TAKE_OVER=1)."""
    store = owner_store(None, folder=tmp_path)
    store.create(json.dumps(OTHER_CONTROLLER).encode())
    monkeypatch.delenv("NADIR_TAKE_OVER", raising=False)
    with pytest.raises(ControllerLockError, match=r"another controller is running on these "
                                                  r"results \(pid 4242 of alice on gpu-login-2.*"
                                                  r"NADIR_TAKE_OVER=1"):
        claim(store)
    monkeypatch.setenv("NADIR_TAKE_OVER", "1")
    release(store, claim(store))
    assert store.read() is None


@case("controller-crashed-here")
def _(tmp_path, caplog):
    """A record left by a controller of this machine that no longer runs is taken over."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout
    store = owner_store(None, folder=tmp_path)
    store.create(json.dumps({**OTHER_CONTROLLER, "host": socket.gethostname(),
                            "pid": int(gone)}).encode())
    with caplog.at_level(logging.WARNING, logger="nadir.storage.controller"):
        release(store, claim(store, take_over=False))
    assert "which no longer runs; taking it over" in caplog.text


# --- catalogues and URLs ---------------------------------------------------------------------

@case("stac-href-outside-folder")
def _(tmp_path):
    (tmp_path / "cat").mkdir()
    stac = tmp_path / "cat" / "items.json"
    stac.write_text(json.dumps({"type": "Feature", "id": "S2B_x", "assets": {"visual": {
        "href": "../../etc/passwd"}}}))
    with pytest.raises(InputError, match=r"items\.json: item 'S2B_x': asset href "
                                         r"'\.\./\.\./etc/passwd' leads outside"):
        stac_scenes(stac)


@case("stac-foreign-bucket")
def _(tmp_path):
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": b, "assets": {"visual": {"href": f"s3://{b}/x.tif"}}}
        for b in ("ours", "theirs")]}))
    ours, theirs = stac_scenes(stac, signed_buckets=frozenset({"ours"}))
    assert (ours.anonymous, theirs.anonymous) == (False, True)


@case("url-with-secret")
def _(tmp_path, monkeypatch):
    url = "https://user:pa55@data.example.org/a/xview.tgz?X-Amz-Signature=5ec&token=t0k#frag"
    recorded = redact(url)
    assert recorded.startswith("https://data.example.org/a/xview.tgz?redacted-")
    assert not any(part in recorded for part in ("user", "pa55", "5ec", "t0k", "frag"))
    assert redact(url.replace("t0k", "other")) != recorded  # two URLs stay apart
    monkeypatch.delenv("NADIR_URLS", raising=False)
    with pytest.raises(NadirError, match=r"recorded without its secret parts"):
        resolve(recorded)
    publish([url])
    assert resolve(recorded) == url and resolve("s3://bucket/k") == "s3://bucket/k"


# --- the matrix and its table ---------------------------------------------------------------

@pytest.mark.parametrize("name", list(MATRIX))
def test_fault(name, tmp_path, request):
    function = MATRIX[name]
    wanted = function.__code__.co_varnames[:function.__code__.co_argcount]
    function(*[tmp_path if arg == "tmp_path" else request.getfixturevalue(arg)
               for arg in wanted])


def test_docs_table_lists_every_case():
    table = (ROOT / "docs" / "faults.md").read_text()
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.MULTILINE)
    assert documented == list(MATRIX), "docs/faults.md's table and the matrix differ"
    assert len(MATRIX) >= 30
