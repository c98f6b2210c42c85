"""The embedded sample: deterministic, georeferenced, DOTA-format; fetched (generated) and indexed
as a DOTA source, through the one fetch and index path every dataset takes."""

import csv
import hashlib
import json
import math

import numpy as np
import pytest
import rasterio
from dataset_builders import index_tables

from nadir.config import validate
from nadir.config.catalogue import CATALOGUE
from nadir.core.errors import InputError
from nadir.datasets.dota import parse_label_file
from nadir.datasets.sample import CLASSES, SampleSpec, write_scene, write_split
from nadir.fetch import fetch_dataset
from nadir.index import index_dataset
from nadir.raster.windows import window_offsets
from nadir.storage.download import FetchSettings

SPEC = SampleSpec(train_scenes=3, val_scenes=1, scene_size=480, objects_per_scene=14, seed=7)


def make(tmp_path, spec=SPEC):
    """Every scene of `spec` in DOTA's layout, one folder per split; (split, image, label)."""
    for split in ("train", "val"):
        write_split(spec, split, tmp_path / split)
    return [(split, tmp_path / split / "images" / f"{scene}.tif",
             tmp_path / split / "labelTxt" / f"{scene}.txt") for split, scene in spec.scenes()]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_dataset(**keys) -> dict:
    """A sample dataset's entry as the validated config holds it (defaults filled in)."""
    config = {"datasets": {"s": {"format": "sample", "train_scenes": 3, "val_scenes": 1,
                                 "scene_size": 480, "objects_per_scene": 14, "seed": 7, **keys}},
              "models": {"ssdlite320_mobilenet_v3_large": None}}
    return validate(config, list(CATALOGUE))["datasets"]["s"]


def fetched(tmp_path, **keys) -> tuple[dict, dict]:
    """The sample fetched (generated) into tmp_path/files and its manifest written beside."""
    spec = sample_dataset(**keys)
    manifest = fetch_dataset("s", spec, tmp_path / "files", FetchSettings(tmp_path / "cache"))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return spec, manifest


def test_same_seed_same_scenes_other_seed_other_scenes(tmp_path):
    a, b = make(tmp_path / "a"), make(tmp_path / "b")
    c = make(tmp_path / "c", SampleSpec(3, 1, 480, 14, seed=8))
    for (_, image_a, label_a), (_, image_b, label_b) in zip(a, b, strict=True):
        assert label_a.read_text() == label_b.read_text()
        with rasterio.open(image_a) as s1, rasterio.open(image_b) as s2:
            assert np.array_equal(s1.read(), s2.read())
    assert a[0][2].read_text() != c[0][2].read_text()


def test_a_split_holds_each_of_its_scenes_as_written_alone(tmp_path):
    for split, image, label in make(tmp_path / "split"):
        write_scene(SPEC, split, image.stem, tmp_path / "one.tif", tmp_path / "one.txt")
        assert label.read_text() == (tmp_path / "one.txt").read_text()
        assert digest(image) == digest(tmp_path / "one.tif")
    assert sorted(p.stem for p in (tmp_path / "split" / "val" / "images").iterdir()) == ["V0000"]


def test_scenes_are_georeferenced_rgb_with_three_rotated_classes_crossing_chips(tmp_path):
    scenes = make(tmp_path)
    with rasterio.open(scenes[0][1]) as src:
        assert (src.count, src.dtypes[0], src.width) == (3, "uint8", 480)
        assert src.crs is not None and src.transform.a == pytest.approx(0.5)
    objects = [o for _, _, label in scenes for o in parse_label_file(label, CLASSES).objects]
    assert {o.category for o in objects} == set(CLASSES)
    sizes = {c: np.mean([math.dist(o.polygon[0:2], o.polygon[4:6]) for o in objects
                         if o.category == c]) for c in CLASSES}
    assert sizes["plane"] > 1.5 * sizes["small-vehicle"]
    rotated = [o for o in objects if abs(o.polygon[1] - o.polygon[3]) > 2]
    assert len(rotated) > len(objects) / 3
    borders = [x + 256 for x in window_offsets(480, 256, 32)]
    crossing = [o for o in objects if any(min(o.polygon[0::2]) < b < max(o.polygon[0::2])
                                          for b in borders)]
    assert crossing


def test_the_sample_is_fetched_and_indexed_as_a_dota_source(tmp_path):
    spec, manifest = fetched(tmp_path)
    assert [(s["scene"], s["split"], s["image"], s["label"]) for s in manifest["scenes"]] == [
        (scene, split, f"{n:02d}-{split}/images/{scene}.tif",
         f"{n:02d}-{split}/labelTxt/{scene}.txt")
        for n, split, scene in [(0, "train", "T0000"), (0, "train", "T0001"),
                                (0, "train", "T0002"), (1, "val", "V0000")]]
    assert manifest["scenes"][0]["crs"] == "EPSG:32633"
    summary = index_dataset(tmp_path / "manifest.json", tmp_path / "files", spec,
                            index_tables(tmp_path / "index"))
    with open(tmp_path / "index" / "scenes.csv") as fh:
        scenes = list(csv.DictReader(fh))
    assert [s["split"] for s in scenes] == ["train", "train", "train", "val"]
    assert all(s["width"] == "480" and s["gsd"] == "0.5" for s in scenes)
    with open(tmp_path / "index" / "annotations.csv") as fh:
        annotations = list(csv.DictReader(fh))
    assert len(annotations) == summary["objects"] == sum(int(s["objects"]) for s in scenes)
    assert len(annotations[0]["polygon"].split()) == 8
    categories = json.loads((tmp_path / "index" / "categories.json").read_text())
    assert [c["name"] for c in categories] == CLASSES  # the sample's own class list


def test_a_label_line_with_seven_numbers_is_named(tmp_path):
    spec, _ = fetched(tmp_path)
    label = tmp_path / "files" / "00-train" / "labelTxt" / "T0002.txt"
    lines = label.read_text().splitlines()
    lines[4] = "1 2 3 4 5 6 7 plane 0"
    label.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"T0002\.txt, line 5: expected .* got 7 numbers"):
        index_dataset(tmp_path / "manifest.json", tmp_path / "files", spec,
                      index_tables(tmp_path / "index"))


def test_a_polygon_outside_the_image_is_counted_as_for_dota(tmp_path):
    spec, _ = fetched(tmp_path)
    with open(tmp_path / "files" / "00-train" / "labelTxt" / "T0000.txt", "a") as fh:
        fh.write("900 900 950 900 950 950 900 950 plane 0\n")
    summary = index_dataset(tmp_path / "manifest.json", tmp_path / "files", spec,
                            index_tables(tmp_path / "index"))
    assert summary["bad_input"]["skipped"]["outside_image"] == 1
    strict = {**spec, "on_bad_input": {**spec["on_bad_input"], "outside_image": "error"}}
    with pytest.raises(InputError, match=r"T0000\.txt, line \d+: polygon .* lies outside the "
                                         r"480x480 image"):
        index_dataset(tmp_path / "manifest.json", tmp_path / "files", strict,
                      index_tables(tmp_path / "index2"))
