"""Parsers, class maps, splits, the index and statistics of the real dataset formats, on files
the tests write in each format."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from dataset_builders import index_tables, make_dota, make_xview, write_geotiff, xview_feature

from nadir.core.errors import InputError
from nadir.datasets import dota, rareplanes, xview
from nadir.datasets.records import BadInput, ClassFilter
from nadir.datasets.splits import seeded_split
from nadir.datasets.tables import ANNOTATION_FIELDS
from nadir.fetch import fetch_dataset
from nadir.index.normalise import AnnotationWriter, index_dataset
from nadir.report.dataset_stats import dataset_statistics
from nadir.report.figures import plot_statistics
from nadir.storage.download import FetchSettings

V15 = dota.CLASSES_BY_VERSION["v1.5"]


def spec(**overrides) -> dict:
    """A dataset config as the schema fills it in."""
    base = {"format": "dota", "version": "v1.5", "class_attribute": "role", "tiled": True,
            "split": {"method": "official", "val_fraction": 0.2, "seed": 0},
            "classes": {"merge": {}, "keep": None, "min_size": 0},
            "on_bad_input": {}}
    return {**base, **overrides}


# --- DOTA -----------------------------------------------------------------------------------

def test_dota_versions_have_15_16_18_classes_and_container_crane_parses():
    assert [len(dota.CLASSES_BY_VERSION[v]) for v in ("v1.0", "v1.5", "v2.0")] == [15, 16, 18]
    text = "0 0 10 0 10 10 0 10 container-crane 0\n1 1 5 1 5 5 1 5 helipad\n"
    label = dota.parse_label_text(text, "x.txt", dota.CLASSES_BY_VERSION["v2.0"])
    assert [o.category for o in label.objects] == ["container-crane", "helipad"]
    with pytest.raises(InputError, match=r"x\.txt, line 1: unknown class 'container-crane'"):
        dota.parse_label_text(text, "x.txt", dota.CLASSES_BY_VERSION["v1.0"])


def test_dota_header_optional_floats_missing_difficult_and_empty_file():
    with_header = "imagesource:GoogleEarth\ngsd:0.146\n1.5 2 30.25 2 30 40 1 40 plane 1\n"
    label = dota.parse_label_text(with_header, "a.txt", V15)
    assert label.gsd == pytest.approx(0.146) and label.imagesource == "GoogleEarth"
    assert label.objects[0].polygon[:3] == [1.5, 2.0, 30.25]
    assert label.objects[0].difficult == 1
    bare = dota.parse_label_text("1 2 30 2 30 40 1 40 small-vehicle\n", "b.txt", V15)
    assert bare.gsd is None and bare.objects[0].difficult == 0
    assert dota.parse_label_text("", "c.txt", V15).objects == []


@pytest.mark.parametrize("line, case, message", [
    ("1 2 abc 2 30 40 1 40 plane 0", "malformed_record", "coordinate 3 is not a number: 'abc'"),
    ("1 2 3 4 5 6 plane", "malformed_record", "got 6 numbers and 1 other field"),
    ("1 2 3 4 5 6 7 8 0", "malformed_record", "the class name is missing"),
    ("1 2 3 4 5 6 7 8 plane 3", "malformed_record", "difficult must be 0 or 1"),
    ("1 2 3 4 5 6 7 8 spaceship 0", "unknown_class", "unknown class 'spaceship'"),
])
def test_dota_bad_lines_error_with_file_and_line_or_are_counted(line, case, message):
    text = f"gsd:0.5\n0 0 9 0 9 9 0 9 ship 0\n{line}\n"
    with pytest.raises(InputError, match=rf"f\.txt, line 3: .*{message}"):
        dota.parse_label_text(text, "f.txt", V15, BadInput({case: "error"}))
    bad = BadInput({case: "skip"})
    label = dota.parse_label_text(text, "f.txt", V15, bad)
    assert len(label.objects) == 1
    assert bad.summary()["skipped"][case] == 1
    assert "f.txt, line 3" in bad.summary()["examples"][case][0]


# --- class remapping and filtering ------------------------------------------------------------

def test_class_filter_merges_keeps_and_drops_small_objects_with_counts():
    f = ClassFilter(V15, merge={"small-vehicle": "vehicle", "large-vehicle": "vehicle"},
                    keep=["vehicle", "plane"], min_size=5)
    assert f.output_classes() == ["plane", "vehicle"]
    square = [0, 0, 10, 0, 10, 10, 0, 10]
    assert f.apply("large-vehicle", square) == "vehicle"
    assert f.apply("ship", square) is None
    assert f.apply("plane", [0, 0, 40, 0, 40, 4, 0, 4]) is None  # 4 px on its short side
    assert f.summary() == {"class_not_kept": 1, "smaller_than_min_size": 1}
    with pytest.raises(InputError, match="unknown class"):
        ClassFilter(V15, merge={"car": "vehicle"})
    with pytest.raises(InputError, match=r"\['boat'\]"):
        ClassFilter(V15, keep=["boat"])


def test_annotation_rows_are_what_csv_writes_even_for_names_that_need_quoting(tmp_path):
    """annotations.csv is written without csv.writer per row: the text must still be its text,
    quoted names and %g coordinates included."""
    classes = ["plane", 'ship, "big"', "two\nlines"]
    objects = [("scene,1", "plane", 0, [1.5, 2, 3, 2, 3, 4, 1.5, 4]),
               ('s"2', 'ship, "big"', 1, [0.1234567, 1e-7, 123456789.0, -0.0, 5e20, 7, 8, 9]),
               ("s3", "two\nlines", 0, [2999.5, 0, 3000, 0, 3000, 1, 2999.5, 1]),
               ("s3", "plane", 1, [1, 1, 2, 1, 2, 2, 1, 2])]
    writer = AnnotationWriter(tmp_path / "annotations.csv", ClassFilter(classes), BadInput())
    for scene, category, difficult, polygon in objects:
        writer.add(scene, category, difficult, polygon, "test")
    writer.close()
    writer.publish()
    expected = io.StringIO()
    rows = csv.writer(expected)
    rows.writerow(ANNOTATION_FIELDS)
    rows.writerows([scene, number, category, difficult, " ".join(map("{:g}".format, polygon))]
                   for number, (scene, category, difficult, polygon)
                   in zip([0, 0, 0, 1], objects, strict=True))
    assert (tmp_path / "annotations.csv").read_bytes().decode() == expected.getvalue()


# --- splits -----------------------------------------------------------------------------------

def test_seeded_split_is_by_scene_reproducible_and_follows_the_fraction():
    scenes = [f"s{i:03d}" for i in range(50)]
    a = seeded_split(scenes, 0.2, seed=7)
    assert a == seeded_split(list(reversed(scenes)), 0.2, seed=7)
    assert sum(v == "val" for v in a.values()) == 10
    assert a != seeded_split(scenes, 0.2, seed=8)
    assert set(seeded_split(["only"], 0.5, 0).values()) == {"train"}


# --- xView ------------------------------------------------------------------------------------

def test_xview_streaming_reader_matches_json_load_across_chunk_boundaries(tmp_path, monkeypatch):
    features = [xview_feature(f"{i}.tif", 18, f"{i},{i},{i + 9},{i + 9}") for i in range(300)]
    path = tmp_path / "x.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=2))
    monkeypatch.setattr(xview, "CHUNK_CHARS", 97)  # features straddle many chunk boundaries
    assert list(xview.iter_features(path)) == features
    path.write_text('{"type": "FeatureCollection", "features": [{"a": 1}, {"b": ')
    with pytest.raises(InputError, match="feature 2 is not valid JSON"):
        list(xview.iter_features(path))


def xview_text(features: list, separators: dict[int, str] | None = None) -> str:
    """A FeatureCollection with the given features, one a line; `separators` replaces the ",\n"
    before feature i (e.g. with stray commas, or with a malformed feature of its own)."""
    lines = [json.dumps(f) for f in features]
    body = "".join((separators or {}).get(i, ",\n" if i else "") + line
                   for i, line in enumerate(lines))
    return '{"type": "FeatureCollection", "features": [\n' + body + "\n]}\n"


@pytest.mark.parametrize("chunk", [97, 4096, xview.CHUNK_CHARS])
def test_xview_reader_reads_what_json_reads_where_the_fast_decoder_refuses(tmp_path, monkeypatch,
                                                                           chunk):
    """Most features are decoded many at a time; what the fast decoder refuses (Infinity, text
    that looks like the end of a feature, stray commas, a feature that is not an object) is
    read feature by feature: the reader yields exactly what the standard library reads."""
    features = [xview_feature(f"{i}.tif", 18, f"{i},{i},{i + 9},{i + 9}") for i in range(300)]
    features[40]["properties"]["note"] = 'looks like the end of a feature: "}, {"'
    features[41]["geometry"]["coordinates"] = [[[float("inf"), 0]]]
    features[120], features[121] = "not an object", {"type": "Feature"}
    path = tmp_path / "x.geojson"
    path.write_text(xview_text(features, separators={200: ", ,\n,"}))
    monkeypatch.setattr(xview, "CHUNK_CHARS", chunk)
    assert list(xview.iter_features(path)) == features
    assert list(xview.iter_features(path, properties_only=True)) == [
        f.get("properties") if isinstance(f, dict) else None for f in features]
    good = [f for f in features if isinstance(f, dict) and "properties" in f]
    good[250]["properties"]["type_id"] = 999
    path.write_text(xview_text(good, {150: ',\n{"type": "Feature", "properties": 01},\n'}))
    with pytest.raises(InputError, match="feature 151 is not valid JSON"):
        list(xview.iter_features(path, properties_only=True))
    path.write_text(xview_text(good))
    with pytest.raises(InputError, match="feature 251: unknown type_id 999"):
        list(xview.read_objects(path, {f"{i}.tif": (100, 100) for i in range(300)}, BadInput(),
                                xview.XviewCounts()))


def test_xview_drops_and_counts_unnamed_ids_empty_boxes_and_absent_images(tmp_path):
    """A box is empty in three forms, all dropped alike: "", [] (what DIUx's loader tests
    for) and no bounds_imcoords at all."""
    missing = xview_feature("1.tif", 73, "")
    del missing["properties"]["bounds_imcoords"]
    features = [xview_feature("1.tif", 18, "10,10,30,20"), xview_feature("1.tif", 75, "1,1,5,5"),
                xview_feature("1.tif", 82, "1,1,5,5"), xview_feature("1.tif", 82, "1,1,5,5"),
                xview_feature("1.tif", 73, ""), xview_feature("1.tif", 73, []), missing,
                xview_feature("1.tif", 73, "5,5,5,9"),
                xview_feature("2.tif", 73, "1,1,5,5"), xview_feature("1.tif", 86, "500,5,600,9")]
    path = tmp_path / "x.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    bad, counts = BadInput(), xview.XviewCounts()
    objects = list(xview.read_objects(path, {"1.tif": (100, 100)}, bad, counts))
    assert [(o.category, o.polygon[:4]) for o in objects] == [("Small Car", [10, 10, 30, 10])]
    assert dict(counts.dropped) == {"unnamed_type_id_75": 1, "unnamed_type_id_82": 2,
                                    "empty_box": 3, "degenerate_box": 1}
    assert bad.skipped == {"label_without_image": 1, "outside_image": 1}
    assert len(xview.CLASS_NAMES) == 60


@pytest.mark.parametrize("props, message", [
    ({"type_id": 999, "bounds_imcoords": "1,1,5,5"}, "feature 1: unknown type_id 999"),
    ({"type_id": 18, "bounds_imcoords": "1,x,5,5"}, "feature 1: bounds_imcoords '1,x,5,5' is not"),
    ({"type_id": "car", "bounds_imcoords": "1,1,5,5"}, "type_id 'car' is not an integer"),
])
def test_xview_bad_features_stop_by_default_naming_the_feature(tmp_path, props, message):
    path = tmp_path / "x.geojson"
    path.write_text(json.dumps({"features": [{"properties": {"image_id": "1.tif", **props}}]}))
    with pytest.raises(InputError, match=message):
        list(xview.read_objects(path, {"1.tif": (100, 100)}, BadInput(), xview.XviewCounts()))


# --- RarePlanes -------------------------------------------------------------------------------

def test_rareplanes_geographic_polygons_land_on_the_right_pixels(tmp_path):
    from rasterio.warp import transform as warp

    transform = write_geotiff(tmp_path / "tile.tif", np.zeros((256, 256, 3), np.uint8),
                              crs="EPSG:32633", origin=(500_000.0, 5_000_000.0), gsd=0.3)
    pixel_polygons = {"large": [(10, 20), (50, 20), (50, 45), (10, 45)],
                      "small": [(100.5, 200.25), (130, 200.25), (130, 230), (100.5, 230)]}
    features = []
    for role, ring in pixel_polygons.items():
        xs, ys = zip(*[transform @ p for p in ring], strict=True)
        lons, lats = warp("EPSG:32633", "EPSG:4326", list(xs), list(ys))
        coords = [[lon, lat] for lon, lat in zip(lons, lats, strict=True)]
        features.append({"type": "Feature",
                         "properties": {"role": f"{role} civil", "num_engines": 2.0},
                         "geometry": {"type": "Polygon", "coordinates": [coords + coords[:1]]}})
    label = tmp_path / "tile.geojson"
    label.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    t = [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f]
    objects = rareplanes.read_objects(label, "role", "EPSG:32633", t, BadInput())
    for obj, ring in zip(objects, pixel_polygons.values(), strict=True):
        assert obj.polygon == pytest.approx([v for p in ring for v in p], abs=1e-3)
    assert [o.category for o in objects] == ["large civil", "small civil"]
    engines = rareplanes.read_objects(label, "num_engines", "EPSG:32633", t, BadInput())
    assert {o.category for o in engines} == {"2"}
    with pytest.raises(InputError, match="class attribute 'wingspan'"):
        rareplanes.read_objects(label, "wingspan", "EPSG:32633", t, BadInput())
    with pytest.raises(InputError, match="no georeferencing"):
        rareplanes.read_objects(label, "role", None, None, BadInput())


# --- fetch + index end to end on files --------------------------------------------------------

def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_dota_fetch_and_index_from_a_zip_and_a_folder(tmp_path):
    sources = make_dota(tmp_path / "src", train=3, val=2)
    # a label without an image and an image without a label, both skipped and counted
    (sources["val"] / "labelTxt-v1.5" / "P0999.txt").write_text("")
    write_geotiff(sources["val"] / "images" / "P0998.tif", np.zeros((64, 64, 3), np.uint8))
    dataset = spec(source=[{"url": str(sources["train"]), "split": "train"},
                           {"url": str(sources["val"]), "split": "val"}])
    files = tmp_path / "raw" / "files"
    manifest = fetch_dataset("dota", dataset, files, FetchSettings(tmp_path / "cache", 0, 5))
    assert [s["scene"] for s in manifest["scenes"]] == [
        "P0000", "P0001", "P0002", "P0100", "P0101", "P0998"]
    assert manifest["labels_without_image"] == ["01-val/labelTxt-v1.5/P0999.txt"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "index"
    summary = index_dataset(tmp_path / "manifest.json", files, dataset, index_tables(out))
    scenes = {r["scene"]: r for r in _read_csv(out / "scenes.csv")}
    assert {k: v["split"] for k, v in scenes.items()} == {
        "P0000": "train", "P0001": "train", "P0002": "train", "P0100": "val", "P0101": "val",
        "P0998": "excluded"}
    assert summary["bad_input"]["skipped"]["label_without_image"] == 1
    assert summary["bad_input"]["skipped"]["image_without_label"] == 1
    assert summary["objects"] == 5 * 8 == len(_read_csv(out / "annotations.csv"))
    names = [c["name"] for c in json.loads((out / "categories.json").read_text())]
    assert names == V15
    strict = {**dataset, "on_bad_input": {"image_without_label": "error"}}
    with pytest.raises(InputError, match=r"P0998\.tif: no label file"):
        index_dataset(tmp_path / "manifest.json", files, strict,
                      index_tables(tmp_path / "index2"))


def test_dota_merge_and_keep_change_the_categories(tmp_path):
    sources = make_dota(tmp_path / "src", train=2, val=1)
    dataset = spec(source=[{"url": str(sources["train"]), "split": "train"},
                           {"url": str(sources["val"]), "split": "val"}],
                   classes={"merge": {"small-vehicle": "vehicle", "plane": "vehicle"},
                            "keep": ["vehicle"], "min_size": 0})
    files = tmp_path / "files"
    (tmp_path / "m.json").write_text(json.dumps(fetch_dataset(
        "d", dataset, files, FetchSettings(tmp_path / "cache", 0, 5))))
    summary = index_dataset(tmp_path / "m.json", files, dataset,
                            index_tables(tmp_path / "out"))
    rows = _read_csv(tmp_path / "out" / "annotations.csv")
    assert {r["category"] for r in rows} == {"vehicle"}
    assert summary["categories"] == [{"id": 1, "name": "vehicle"}]
    assert summary["objects"] + summary["class_filter"]["class_not_kept"] == 3 * 8


def test_xview_index_counts_every_drop_seeds_the_split_and_shows_imbalance(tmp_path):
    built = make_xview(tmp_path / "src", images=4)
    dataset = spec(format="xview", source=[{"url": str(built["images"])},
                                           {"url": str(built["labels"])}],
                   split={"method": "official", "val_fraction": 0.25, "seed": 3})
    files = tmp_path / "files"
    (tmp_path / "m.json").write_text(json.dumps(fetch_dataset(
        "xv", dataset, files, FetchSettings(tmp_path / "cache", 0, 5))))
    summary = index_dataset(tmp_path / "m.json", files, dataset,
                            index_tables(tmp_path / "out"))
    assert summary["features"] == built["features"]
    assert summary["objects"] == built["objects"]
    assert summary["dropped"] == {"degenerate_box": 1, "empty_box": 3, "unnamed_type_id_75": 1,
                                  "unnamed_type_id_82": 1}
    assert summary["bad_input"]["skipped"]["label_without_image"] == 1
    assert summary["scenes"] == {"train": 3, "val": 1}
    assert summary["split"].startswith("seeded")
    again = index_dataset(tmp_path / "m.json", files, dataset,
                          index_tables(tmp_path / "out2"))
    assert (tmp_path / "out" / "scenes.csv").read_text() == (
        tmp_path / "out2" / "scenes.csv").read_text()
    assert again["scenes"] == summary["scenes"]
    stats = dataset_statistics(tmp_path / "out" / "scenes.csv",
                               tmp_path / "out" / "annotations.csv",
                               tmp_path / "out" / "categories.json")
    assert sum(stats["objects"].values()) == built["objects"]
    assert len(stats["objects_per_class"]["train"]) == 60
    plot_statistics(stats, tmp_path / "stats.png", "xv")
    assert (tmp_path / "stats.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_placed_file_says_where_it_is_expected_and_where_to_get_it(tmp_path):
    dataset = spec(source=[{"url": str(tmp_path / "DOTA" / "train.zip"), "split": "train"}])
    with pytest.raises(InputError, match=r"DOTA/train\.zip: not found.*captain-whu"):
        fetch_dataset("d", dataset, tmp_path / "files", FetchSettings(tmp_path / "c", 0, 5))


def test_the_fetch_job_reports_a_missing_placed_archive_without_a_traceback(tmp_path, capsys):
    """As the fetch rule's script runs it (nadir.core.jobs): the message, no traceback, and no
    manifest."""
    from nadir.core.jobs import report_errors
    from nadir.fetch import fetch

    dataset = {"format": "xview", "source": [{"url": str(tmp_path / "train_images.tgz")}]}
    code = report_errors("fetch", lambda: fetch(
        "xv", dataset, {"cache_dir": str(tmp_path / "c"), "retries": 0, "timeout_s": 5},
        files=tmp_path / "files", manifest=tmp_path / "m.json"))
    err = capsys.readouterr().err
    assert code == 1
    assert "train_images.tgz: not found" in err and "xviewdataset.org" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


def test_config_schema_fills_dataset_defaults_and_rejects_bad_values():
    from nadir.config import ConfigError, validate

    model = "ssdlite320_mobilenet_v3_large"  # validation reads its catalogue defaults

    config = {"datasets": {"d": {"format": "dota", "version": "v2.0",
                                 "source": [{"url": "/data/DOTA/train.zip", "split": "train"}]}},
              "models": {model: {}}}
    validate(config, [model])
    d = config["datasets"]["d"]
    assert d["on_bad_input"]["malformed_record"] == "error"
    assert d["split"] == {"method": "official", "val_fraction": 0.2, "seed": 0,
                          "selection_fraction": 0.1}
    assert d["source"][0]["sha256"] is None and config["fetch"]["retries"] == 5
    for bad in ({"version": "v3"}, {"source": []}, {"on_bad_input": {"unknown_class": "ignore"}},
                {"source": [{"url": "x", "sha256": "abc"}]}):
        broken = {"datasets": {"d": {**config["datasets"]["d"], **bad}}, "models": {model: {}}}
        with pytest.raises(ConfigError, match="datasets.d"):
            validate(broken, [model])


def test_dota_polygon_outside_its_image_is_counted_or_stops_with_file_and_line(tmp_path):
    folder = tmp_path / "val"
    write_geotiff(folder / "images" / "P1.tif", np.zeros((64, 64, 3), np.uint8))
    (folder / "labelTxt").mkdir()
    (folder / "labelTxt" / "P1.txt").write_text(
        "1 1 9 1 9 9 1 9 ship 0\n70 70 90 70 90 90 70 90 ship 0\n")
    train = tmp_path / "train"
    write_geotiff(train / "images" / "P2.tif", np.zeros((64, 64, 3), np.uint8))
    (train / "labelTxt").mkdir()
    (train / "labelTxt" / "P2.txt").write_text("")
    dataset = spec(source=[{"url": str(folder), "split": "val"},
                           {"url": str(train), "split": "train"}])
    files = tmp_path / "files"
    (tmp_path / "m.json").write_text(json.dumps(fetch_dataset(
        "d", dataset, files, FetchSettings(tmp_path / "cache", 0, 5))))
    summary = index_dataset(tmp_path / "m.json", files, dataset,
                            index_tables(tmp_path / "out"))
    assert summary["objects"] == 1
    assert summary["bad_input"]["skipped"]["outside_image"] == 1
    strict = {**dataset, "on_bad_input": {"outside_image": "error"}}
    with pytest.raises(InputError, match=r"P1\.txt, line 2: polygon .* outside the 64x64 image"):
        index_dataset(tmp_path / "m.json", files, strict, index_tables(tmp_path / "out2"))


@pytest.mark.parametrize("entries, split, fix", [
    ([("train", "train")], "val", r"give a source entry `split: val` \(datasets.d.source\)"),
    ([("val", "val")], "train", "give a source entry `split: train`"),
])
def test_an_empty_split_stops_the_index_naming_the_split_and_the_key(tmp_path, entries, split,
                                                                      fix):
    sources = make_dota(tmp_path / "src", train=2, val=1)
    dataset = spec(source=[{"url": str(sources[s]), "split": name} for s, name in entries])
    files = tmp_path / "files"
    (tmp_path / "m.json").write_text(json.dumps(fetch_dataset(
        "d", dataset, files, FetchSettings(tmp_path / "cache", 0, 5))))
    with pytest.raises(InputError, match=rf"datasets.d: the {split} split would hold none of "
                                         rf"the \d labelled scene\(s\); {fix}"):
        index_dataset(tmp_path / "m.json", files, dataset,
                      index_tables(tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*.csv*"))


def test_a_split_without_chips_stops_the_coco_stage_before_writing(tmp_path):
    from nadir.coco.files import write_coco
    from nadir.core.errors import NadirError

    shard = tmp_path / "shard-000.json"
    shard.write_text(json.dumps({"chips": [{
        "split": "train", "file": "a.jpg", "width": 64, "height": 64, "scene": "a", "x": 0,
        "y": 0, "transform": None, "objects": []}]}))
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps([{"id": 1, "name": "plane"}]))
    outputs = {"train": tmp_path / "train.json", "val": tmp_path / "val.json"}
    with pytest.raises(NadirError, match="no chip of the val split was written"):
        write_coco([shard], categories, outputs, tmp_path / "stats.json")
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["categories.json",
                                                                 "shard-000.json"]
