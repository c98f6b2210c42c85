"""DOTA, xView and RarePlanes exactly as they are distributed, in miniature: the replicas of
tests/dataset_builders.py (archive names, nesting, headers, PNG tiles with their GDAL
sidecars, the public bucket on the session's S3 server) go through fetch, index, chipping and
COCO as the pipeline's jobs run them (the stage functions, one shard), configured by the YAML
snippets of docs/datasets.md read from that file, so the docs and the tests cannot drift.
Each run costs about a second."""

from __future__ import annotations

import html
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import RAREPLANES_BUCKET, ROOT
from dataset_builders import (
    DOTA_SCENES,
    ROLES,
    as_placed,
    docs_datasets,
    dota_label,
    index_tables,
    make_dota_drive,
    make_xview,
)

from nadir.chip import write_chip_manifest
from nadir.chip.shard import chip_shard, scenes_to_chip
from nadir.coco.files import write_coco
from nadir.config import dataset_chipping, validate
from nadir.core.errors import InputError
from nadir.datasets import dota
from nadir.datasets.tables import read_annotations
from nadir.fetch import fetch_dataset
from nadir.index.normalise import index_dataset
from nadir.raster.chip_params import ChipParams
from nadir.report.dataset_stats import chipping_warnings, dataset_statistics, dataset_summary_html
from nadir.storage.download import FetchSettings

MODEL = "ssdlite320_mobilenet_v3_large"
DOCS = docs_datasets()


@dataclass
class Run:
    manifest: dict
    summary: dict
    coco: dict  # split -> COCO dict
    chips: dict  # the chip manifest
    warnings: list[dict]  # the index's and the chipping's, as stats.json holds them
    shard: Path
    page: str  # the dataset's summary page in the report

    def cases(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for warning in self.warnings:
            found.setdefault(warning["case"], []).append(warning["message"])
        return found

    def boxes(self, split: str) -> dict[str, list]:
        """Per scene, (class, [x, y, w, h] in scene pixels, difficult), sorted."""
        names = {c["id"]: c["name"] for c in self.coco[split]["categories"]}
        images = {im["id"]: im for im in self.coco[split]["images"]}
        found: dict[str, list] = {}
        for ann in self.coco[split]["annotations"]:
            image = images[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            found.setdefault(image["scene"], []).append(
                (names[ann["category_id"]], [x + image["x"], y + image["y"], w, h],
                 ann["difficult"]))
        return {scene: sorted(b, key=lambda t: (t[0], t[1])) for scene, b in found.items()}


def to_coco(name: str, spec: dict, work: Path, chipping: dict | None = None) -> Run:
    """What the fetch, index, chip, chip_manifest, coco and dataset_stats jobs of one dataset
    make, with one shard; `chipping` is the config's shared `chipping` section."""
    config = {"datasets": {name: spec}, "models": {MODEL: {}}, "chipping": chipping or {}}
    validate(config, [MODEL])
    spec = config["datasets"][name]
    files = work / "raw" / "files"
    manifest = fetch_dataset(name, spec, files, FetchSettings(work / "cache", 0, 5))
    (work / "manifest.json").write_text(json.dumps(manifest))
    tables = index_tables(work / "index")
    summary = index_dataset(work / "manifest.json", files, spec, tables)
    images = {s["scene"]: files / s["image"] for s in manifest["scenes"]
              if spec["format"] == "xview" or s["label"]}
    params = ChipParams.from_config(dataset_chipping(config, name))
    shard = work / "chips" / "shard-000.tar"
    chip_shard(scenes_to_chip(tables.scenes, images), read_annotations(tables.annotations),
               images, params, shard, shard.with_suffix(".json"))
    chips = write_chip_manifest([shard.with_suffix(".json")], work / "chips" / "manifest.json")
    outputs = {split: work / "coco" / f"{split}.json" for split in ("train", "val")}
    outputs["train"].parent.mkdir(parents=True)
    coco_stats = write_coco([shard.with_suffix(".json")], tables.categories, outputs,
                            work / "coco" / "stats.json")
    stats = dataset_statistics(tables.scenes, tables.annotations, tables.categories)
    stats["warnings"] = summary["warnings"] + chipping_warnings(
        stats, coco_stats, ChipParams.from_record(chips["params"], "manifest.json"))
    return Run(manifest, summary, {s: json.loads(p.read_text()) for s, p in outputs.items()},
               chips, stats["warnings"], shard,
               dataset_summary_html(name, summary, stats, coco_stats))


# --- DOTA -----------------------------------------------------------------------------------

def dota_boxes(split: str, version: str = "v1.5") -> dict[str, list]:
    """What the replica's label files of a split hold, as Run.boxes gives it."""
    expected = {}
    for name, (scene_split, _) in DOTA_SCENES.items():
        if scene_split == split:
            objects = dota.parse_label_text(dota_label(name, version), name,
                                            dota.CLASSES_BY_VERSION[version]).objects
            expected[name] = sorted(
                ((o.category, [min(o.polygon[0::2]), min(o.polygon[1::2]),
                               max(o.polygon[0::2]) - min(o.polygon[0::2]),
                               max(o.polygon[1::2]) - min(o.polygon[1::2])], o.difficult)
                 for o in objects), key=lambda t: (t[0], t[1]))
    return expected


def assert_boxes(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for scene, rows in expected.items():
        assert [(c, d) for c, _, d in got[scene]] == [(c, d) for c, _, d in rows], scene
        for (_, box, _), (_, want, _) in zip(got[scene], rows, strict=True):
            assert box == pytest.approx(want, abs=0.01), scene


@pytest.fixture(scope="module")
def dota_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("dota") / "data"
    make_dota_drive(data / "DOTA")
    return data


def test_dota_v1_5_from_its_drive_folders_as_the_docs_configure_it(dota_data, tmp_path):
    run = to_coco("dota_v1_5", as_placed(DOCS["dota_v1_5"], dota_data), tmp_path)
    assert [c["name"] for c in run.coco["train"]["categories"]] == \
        dota.CLASSES_BY_VERSION["v1.5"]
    for split in ("train", "val"):
        assert_boxes(run.boxes(split), dota_boxes(split))
    assert len(run.coco["train"]["annotations"]) == 3 + 4 + 3 + 3 + 1  # crane in P0001, gtf
    assert len(run.coco["val"]["annotations"]) == 4 + 4  # crane in P0003, gtf in P0004
    assert run.chips["params"]["size"] == 1024 and run.chips["params"]["overlap"] == 200
    cases = run.cases()
    assert sorted(cases) == ["copy_set_aside", "empty_class", "label_variant_set_aside"]
    assert "(e.g. 00-train/1/part1/images/P0000.png, a copy of 00-train/part1/images/" \
        "P0000.png)" in cases["copy_set_aside"][0]
    assert [m.split(" were not read")[0] for m in cases["label_variant_set_aside"]] == [
        "4 label file(s) under 01-train/DOTA-v1.5_train_hbb",
        "2 label file(s) under 03-val/DOTA-v1.5_val_hbb"]
    assert "horizontal-box copies" in cases["label_variant_set_aside"][0]
    assert cases["empty_class"][0].startswith("11 of the 16 classes of DOTA v1.5 have no object")
    assert run.summary["warnings"] == [w for w in run.warnings
                                       if w["case"] != "class_lost_in_chipping"]
    page = html.unescape(run.page)
    assert f"Warnings ({len(run.warnings)})" in page
    assert all(w["message"] in page for w in run.warnings)
    assert "<td>container-crane</td><td>1</td><td>1</td><td>1</td><td>1</td>" in run.page


def test_dota_v1_0_from_its_archives_listed_one_by_one(dota_data, tmp_path):
    run = to_coco("dota_v1_0", as_placed(DOCS["dota_v1_0"], dota_data), tmp_path)
    assert [c["name"] for c in run.coco["val"]["categories"]] == \
        dota.CLASSES_BY_VERSION["v1.0"]
    for split in ("train", "val"):
        assert_boxes(run.boxes(split), dota_boxes(split, "v1.0"))
    assert len(run.coco["train"]["annotations"]) == 3 + 3 + 3 + 3 + 1
    assert sorted(run.cases()) == ["empty_class"]


def test_a_whole_split_folder_reads_the_configured_version_and_sets_the_rest_aside(
        dota_data, tmp_path):
    spec = {"format": "dota", "version": "v1.5", "chipping": {"size": 1024, "overlap": 200},
            "source": [{"url": str(dota_data / "DOTA" / "train"), "split": "train"},
                       {"url": str(dota_data / "DOTA" / "val"), "split": "val"}]}
    run = to_coco("d", spec, tmp_path)
    for split in ("train", "val"):
        assert_boxes(run.boxes(split), dota_boxes(split))
    set_aside = {m.split(" label file(s) under ")[1].split(" were")[0]: m.split(": ", 1)[1]
                 for m in run.cases()["label_variant_set_aside"]}
    assert set_aside == {
        "00-train/labelTxt-v1.0/labelTxt":
            "labels of DOTA v1.0, not of the configured version v1.5",
        "00-train/labelTxt-v1.0/Train_Task2_gt/trainset_reclabelTxt":
            "horizontal-box copies (DOTA's reclabel/_hbb labels), not the oriented labels",
        "00-train/labelTxt-v1.5/DOTA-v1.5_train_hbb":
            "horizontal-box copies (DOTA's reclabel/_hbb labels), not the oriented labels",
        "01-val/labelTxt-v1.0/labelTxt":
            "labels of DOTA v1.0, not of the configured version v1.5",
        "01-val/labelTxt-v1.0/Val_Task2_gt/valset_reclabelTxt":
            "horizontal-box copies (DOTA's reclabel/_hbb labels), not the oriented labels",
        "01-val/labelTxt-v1.5/DOTA-v1.5_val_hbb":
            "horizontal-box copies (DOTA's reclabel/_hbb labels), not the oriented labels"}


@pytest.mark.parametrize("version", ["v1.0", "v1.5"])
def test_dota_unzipped_in_place_as_training_toolkits_lay_it_out(dota_data, tmp_path, version):
    """Every Drive archive unzipped where it lies (`images/P0000.png`,
    `labelTxt-v1.0/labelTxt/`, `trainset_reclabelTxt/`, `labelTxt-v1.5/DOTA-v1.5_train/`, as
    mmrotate's guide shows it), one folder per split given as it is."""
    import zipfile

    unzipped = tmp_path / "DOTA"
    for archive in sorted((dota_data / "DOTA").rglob("*.zip")):
        if "1" in archive.relative_to(dota_data / "DOTA").parts:
            continue  # the Drive's copy of part1.zip
        within = archive.parent.relative_to(dota_data / "DOTA")
        target = unzipped / within
        if archive.parent.name.startswith("labelTxt") and not any(
                n.count("/") for n in zipfile.ZipFile(archive).namelist()):
            target = target / archive.stem  # files at the top: unzipped into a folder
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target)
    spec = {"format": "dota", "version": version, "chipping": {"size": 1024, "overlap": 200},
            "source": [{"url": str(unzipped / "train"), "split": "train"},
                       {"url": str(unzipped / "val"), "split": "val"}]}
    run = to_coco("d", spec, tmp_path / "work")
    for split in ("train", "val"):
        assert_boxes(run.boxes(split), dota_boxes(split, version))
    other = "v1.5" if version == "v1.0" else "v1.0"
    reasons = sorted(m.split(": ", 1)[1] for m in run.cases()["label_variant_set_aside"])
    assert reasons.count(f"labels of DOTA {other}, not of the configured version "
                         f"{version}") == 2


def test_silent_outcomes_are_warnings_that_say_what_to_check(dota_data, tmp_path):
    """v1.0 labels under a v1.5 config, a part zip left out, chips too small for a class."""
    drive = dota_data / "DOTA"
    spec = {"format": "dota", "version": "v1.5", "chipping": {"size": 128, "overlap": 16},
            "source": [{"url": str(drive / "train" / "images" / "part1.zip"), "split": "train"},
                       {"url": str(drive / "train" / "images" / "part3.zip"), "split": "train"},
                       {"url": str(drive / "train" / "labelTxt-v1.0" / "labelTxt.zip"),
                        "split": "train"},
                       {"url": str(drive / "val" / "images"), "split": "val"},
                       {"url": str(drive / "val" / "labelTxt-v1.0" / "labelTxt.zip"),
                        "split": "val"}]}
    cases = to_coco("d", spec, tmp_path).cases()
    assert "container-crane first appear(s) in DOTA v1.5: are the labels v1.0's" in \
        cases["empty_class"][0]
    assert cases["label_without_image"] == [
        "1 label file(s) of split train have no image (P0002): an image archive of that split "
        "(e.g. a DOTA part zip) may be missing from the source"]
    lost = cases["class_lost_in_chipping"]
    assert [m.split(":")[0] for m in lost] == [
        "1 class(es) with objects in the train scenes have none in the train chips",
        "1 class(es) with objects in the val scenes have none in the val chips"]
    assert "ground-track-field (1 objects, longest box side 270.0 px)" in lost[0]
    assert "the 128 px chips are too small for ground-track-field" in lost[0]


def test_a_split_whose_images_have_no_labels_names_what_its_entries_brought(dota_data,
                                                                             tmp_path):
    """The train entries exist: the hint must not ask for `split: train`."""
    drive = dota_data / "DOTA"
    spec = {"format": "dota", "version": "v1.5",
            "source": [{"url": str(drive / "train" / "images"), "split": "train"},
                       {"url": str(drive / "val" / "images"), "split": "val"},
                       {"url": str(drive / "val" / "labelTxt-v1.5"), "split": "val"}]}
    with pytest.raises(InputError) as error:
        to_coco("d", spec, tmp_path)
    message = str(error.value)
    assert "the train split would hold none of the 2 labelled scene(s)" in message
    assert "have `split: train`, but brought 4 image(s), 4 of them without a label file" in \
        message
    assert "give a source entry" not in message


# --- xView -----------------------------------------------------------------------------------

def test_xview_from_its_archives_as_the_docs_configure_it(tmp_path):
    built = make_xview(tmp_path / "data" / "xview", images=3, size=160)
    run = to_coco("xview", as_placed(DOCS["xview"], tmp_path / "data"), tmp_path / "work",
                  chipping={"size": 256})
    assert run.summary["objects"] == built["objects"]
    assert sum(len(run.coco[s]["annotations"]) for s in ("train", "val")) == built["objects"]
    assert run.summary["dropped"]["empty_box"] == 3  # missing, "" and []
    assert run.summary["scenes"] == {"train": 2, "val": 1}
    assert [w["case"] for w in run.warnings] == ["empty_class", "label_without_image"]


# --- RarePlanes ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rareplanes_folders(rareplanes_bucket, tmp_path_factory) -> Path:
    """The tarballs of the replica bucket extracted by hand, as the docs say: both tarballs of
    a split in /data/rareplanes/<split>/."""
    data = tmp_path_factory.mktemp("rp") / "data"
    for split in ("train", "test"):
        for archive in (rareplanes_bucket["root"] / "real" / "tarballs" / split).iterdir():
            with tarfile.open(archive) as tf:
                tf.extractall(data / "rareplanes" / split, filter="data")
    return data


def aux_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*.aux.xml")}


@pytest.mark.parametrize("name", ["rareplanes", "rareplanes_tarballs", "rareplanes_folders"])
def test_rareplanes_tiles_with_their_sidecars_reach_coco_with_their_crs_and_role_ids(
        name, rareplanes_bucket, rareplanes_folders, s3, tmp_path, monkeypatch):
    """From the bucket's prefixes, its tarballs and the extracted folders: every aircraft at
    its pixels, chips carrying the tiles' CRS and transform, class ids RarePlanes' role_id;
    GDAL's PAM is on in this process (no nadir job sets it off here), and still no .aux.xml is
    written or changed anywhere."""
    monkeypatch.delenv("GDAL_PAM_ENABLED", raising=False)
    tiles = rareplanes_bucket["tiles"]
    before = aux_files(rareplanes_folders) | aux_files(rareplanes_bucket["root"])
    run = to_coco(name, as_placed(DOCS[name], rareplanes_folders, s3.endpoint), tmp_path,
                  chipping={"geotiff": True})
    assert run.coco["train"]["categories"] == [{"id": i, "name": ROLES[i]} for i in (1, 3, 6, 7)]
    for split, coco_split in (("train", "train"), ("test", "val")):
        expected = {}
        for tile, info in tiles.items():
            if info["split"] != split:
                continue
            expected[tile] = sorted(
                ((role, [min(p[0::2]), min(p[1::2]), max(p[0::2]) - min(p[0::2]),
                         max(p[1::2]) - min(p[1::2])], 0) for role, _, p in info["objects"]),
                key=lambda t: (t[0], t[1]))
        assert_boxes(run.boxes(coco_split), expected)
        ids = {ann["category_id"] for ann in run.coco[coco_split]["annotations"]}
        assert ids == {role_id for t in expected for _, role_id, _ in tiles[t]["objects"]}
    for tile, info in tiles.items():
        assert run.chips["scenes"][tile]["crs"] == "EPSG:4326"
        t = info["transform"]
        chip = next(im for s in ("train", "val") for im in run.coco[s]["images"]
                    if im["scene"] == tile)
        assert chip["transform"] == pytest.approx([t.c, t.a, t.b, t.f, t.d, t.e])
    import rasterio

    with tarfile.open(run.shard) as tf:
        geotiff = next(m for m in tf.getmembers() if m.name.endswith(".tif"))
        with rasterio.MemoryFile(tf.extractfile(geotiff).read()) as memory, \
                memory.open() as chip:
            assert chip.crs.to_string() == "EPSG:4326"
    assert run.manifest["scenes"][0]["sidecars"] == [run.manifest["scenes"][0]["image"] +
                                                     ".aux.xml"]
    after = aux_files(rareplanes_folders) | aux_files(rareplanes_bucket["root"])
    assert after == before
    fetched = aux_files(tmp_path)
    assert {p.name for p in fetched} == {f"{t}.png.aux.xml" for t in tiles}
    originals = {p.name: data for p, data in before.items()}
    assert all(originals[p.name] == data for p, data in fetched.items())


def test_a_subset_of_the_bucket_keeps_rareplanes_own_class_ids(rareplanes_bucket, s3, tmp_path):
    """The first 2 train tiles (roles 1 and 6) and the first test tile (role 7): the ids stay
    1, 6 and 7, where numbering the roles found would give 1, 2, 3."""
    spec = as_placed(DOCS["rareplanes"], tmp_path, s3.endpoint)
    spec["source"][0]["max_scenes"], spec["source"][1]["max_scenes"] = 2, 1
    config = {"datasets": {"rp": spec}, "models": {MODEL: {}}}
    validate(config, [MODEL])
    files = tmp_path / "files"
    manifest = fetch_dataset("rp", config["datasets"]["rp"], files,
                             FetchSettings(tmp_path / "cache", 0, 5))
    assert [len(s["sidecars"]) for s in manifest["scenes"]] == [1, 1, 1]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    summary = index_dataset(tmp_path / "m.json", files, config["datasets"]["rp"],
                            index_tables(tmp_path / "index"))
    assert summary["categories"] == [{"id": i, "name": ROLES[i]} for i in (1, 6, 7)]
    assert summary["class_ids"] == "role_id"


def test_a_tile_whose_sidecar_was_left_behind_stops_the_index_saying_so(
        rareplanes_folders, tmp_path):
    for split in ("train", "test"):
        shutil.copytree(rareplanes_folders / "rareplanes" / split, tmp_path / split)
    next((tmp_path / "test").rglob("*.aux.xml")).unlink()
    spec = {"format": "rareplanes", "source": [{"url": str(tmp_path / "train"), "split": "train"},
                                               {"url": str(tmp_path / "test"), "split": "val"}]}
    with pytest.raises(InputError, match=r"no georeferencing .* `<tile>\.png\.aux\.xml`"):
        to_coco("rp", spec, tmp_path / "work")


# --- the docs and the config's examples ------------------------------------------------------

def test_config_examples_are_the_docs_snippets():
    """config/config.yaml's commented examples configure each dataset as docs/datasets.md."""
    text = (ROOT / "config" / "config.yaml").read_text()
    block = text.split("e.g.:\n", 1)[1].split("\n\n", 1)[0]
    examples = yaml.safe_load("\n".join(line.split("#", 1)[1][1:].split("  #")[0]
                                        for line in block.splitlines()))
    assert examples and set(examples) <= set(DOCS)
    for name, spec in examples.items():
        assert spec == DOCS[name], name


def test_every_docs_snippet_is_a_valid_config():
    for name, spec in DOCS.items():
        validate({"datasets": {name: json.loads(json.dumps(spec))}, "models": {MODEL: {}}},
                 [MODEL])
    assert {"dota_v1_5", "dota_v1_0", "xview", "rareplanes", "rareplanes_tarballs",
            "rareplanes_folders"} <= set(DOCS)
    assert RAREPLANES_BUCKET in DOCS["rareplanes"]["source"][0]["url"]


# --- sidecars ----------------------------------------------------------------------------------

def test_world_file_and_pam_sidecar_complete_each_other_as_gdal_reads_them(tmp_path):
    """A PNG with a world file (read by GDAL's driver, PAM on or off) and an `.aux.xml`
    holding only the SRS: the header gives the transform, the sidecar the CRS; a sidecar's
    GeoTransform, where it has one, comes first (GDAL's default order of sources)."""
    import numpy as np
    import rasterio
    from rasterio.shutil import copy as gdal_copy
    from rasterio.transform import from_origin

    from nadir.fetch.scan import classify
    from nadir.raster.opener import image_header

    source = tmp_path / "s.tif"
    with rasterio.open(source, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500_000, 5_000_000, 2, 2)) as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        gdal_copy(str(source), str(tmp_path / "t.png"), driver="PNG", WORLDFILE="YES")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif", "t.png", "t.wld"]
    assert image_header(tmp_path / "t.png")["crs"] is None  # half a georeferencing
    (tmp_path / "t.png.aux.xml").write_text("<PAMDataset><SRS>EPSG:32633</SRS></PAMDataset>")
    header = image_header(tmp_path / "t.png")
    assert header["crs"] == "EPSG:32633"
    assert header["transform"] == [2.0, 0.0, 500_000.0, 0.0, -2.0, 5_000_000.0]
    (tmp_path / "t.png.aux.xml").write_text(
        "<PAMDataset><SRS>EPSG:32633</SRS><GeoTransform>1000, 1, 0, 2000, 0, -1"
        "</GeoTransform></PAMDataset>")
    assert image_header(tmp_path / "t.png")["transform"] == [1.0, 0.0, 1000.0, 0.0, -1.0,
                                                             2000.0]
    assert [classify(f"PS-RGB_tiled/{name}", "rareplanes") for name in (
        "t.png", "t.png.aux.xml", "t.pgw", "t.wld", "t.tif.aux.xml", "t.xml")] == [
        "image", "sidecar", "sidecar", "sidecar", "sidecar", None]
    assert classify("geojson_aircraft_tiled/t.png.aux.xml", "rareplanes") is None
