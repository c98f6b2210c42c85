"""The embedded sample: deterministic, georeferenced, DOTA-format; and the index built from it."""

import csv
import hashlib
import math

import numpy as np
import pytest
import rasterio

from nadir.chip.chipping import window_offsets
from nadir.core.errors import InputError, NadirError
from nadir.datasets.dota import parse_label_file
from nadir.datasets.sample import CLASSES, SampleSpec, write_scene, write_scenes
from nadir.datasets.tables import IndexTables, SceneSource, index_sample

SPEC = SampleSpec(train_scenes=3, val_scenes=1, scene_size=480, objects_per_scene=14, seed=7)


def make(tmp_path, spec=SPEC):
    sources = []
    for split, scene in spec.scenes():
        image = tmp_path / split / "images" / f"{scene}.tif"
        label = tmp_path / split / "labelTxt" / f"{scene}.txt"
        write_scene(spec, split, scene, image, label)
        sources.append(SceneSource(scene, split, image, label))
    return sources


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_scenes_other_seed_other_scenes(tmp_path):
    a, b = make(tmp_path / "a"), make(tmp_path / "b")
    c = make(tmp_path / "c", SampleSpec(3, 1, 480, 14, seed=8))
    for x, y in zip(a, b, strict=True):
        assert x.label.read_text() == y.label.read_text()
        with rasterio.open(x.image) as s1, rasterio.open(y.image) as s2:
            assert np.array_equal(s1.read(), s2.read())
    assert a[0].label.read_text() != c[0].label.read_text()


def test_each_scene_goes_to_the_paths_named_after_it_in_any_order(tmp_path):
    spec = SampleSpec(train_scenes=2, val_scenes=1, scene_size=96, objects_per_scene=3, seed=7)
    scenes = spec.scenes()
    images = [tmp_path / split / "images" / f"{scene}.tif" for split, scene in scenes]
    labels = [tmp_path / split / "labelTxt" / f"{scene}.txt" for split, scene in scenes]
    write_scenes(spec, images[::-1], labels)  # images listed in the other order
    for (split, scene), label in zip(scenes, labels, strict=True):
        write_scene(spec, split, scene, tmp_path / "one.tif", tmp_path / "one.txt")
        assert label.read_text() == (tmp_path / "one.txt").read_text()
        assert digest(tmp_path / split / "images" / f"{scene}.tif") == digest(tmp_path / "one.tif")
    with pytest.raises(NadirError, match=r"one label path per scene.*scenes without one: "
                                         r"\['V0000'\]; paths of no scene: \['extra'\]"):
        write_scenes(spec, images, [*labels[:2], tmp_path / "extra.txt"])


def test_scenes_are_georeferenced_rgb_with_three_rotated_classes_crossing_chips(tmp_path):
    sources = make(tmp_path)
    with rasterio.open(sources[0].image) as src:
        assert (src.count, src.dtypes[0], src.width) == (3, "uint8", 480)
        assert src.crs is not None and src.transform.a == pytest.approx(0.5)
    objects = [o for s in sources for o in parse_label_file(s.label, CLASSES).objects]
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


def test_index_tables(tmp_path):
    sources = make(tmp_path)
    counts = index_sample(sources, CLASSES, IndexTables.in_folder(tmp_path / "index"))
    with open(tmp_path / "index" / "scenes.csv") as fh:
        scenes = list(csv.DictReader(fh))
    assert [s["split"] for s in scenes] == ["train", "train", "train", "val"]
    assert all(s["width"] == "480" and s["gsd"] == "0.5" for s in scenes)
    with open(tmp_path / "index" / "annotations.csv") as fh:
        annotations = list(csv.DictReader(fh))
    assert len(annotations) == counts["objects"] == sum(int(s["objects"]) for s in scenes)
    assert len(annotations[0]["polygon"].split()) == 8


def test_missing_image_is_named(tmp_path):
    sources = make(tmp_path)
    sources[1].image.unlink()
    with pytest.raises(InputError, match=r"T0001\.tif: image not found"):
        index_sample(sources, CLASSES, IndexTables.in_folder(tmp_path / "index"))


def test_label_line_with_seven_numbers_is_named(tmp_path):
    sources = make(tmp_path)
    lines = sources[2].label.read_text().splitlines()
    lines[4] = "1 2 3 4 5 6 7 plane 0"
    sources[2].label.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"T0002\.txt, line 5: expected .* got 7 numbers"):
        index_sample(sources, CLASSES, IndexTables.in_folder(tmp_path / "index"))


def test_polygon_outside_the_image_is_named(tmp_path):
    sources = make(tmp_path)
    with open(sources[0].label, "a") as fh:
        fh.write("900 900 950 900 950 950 900 950 plane 0\n")
    with pytest.raises(InputError, match=r"entirely outside the 480x480 image"):
        index_sample(sources, CLASSES, IndexTables.in_folder(tmp_path / "index"))
