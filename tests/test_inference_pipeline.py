"""`snakemake predict` on the tiny sample: the features of each val scene are exactly the
scene-level evaluation's merged detections, the files read back with GDAL/OGR (CRS included),
and adding a scene to `inference:` plans only that scene's job."""

import json
import shutil

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import rasterio.crs
import rasterio.warp
import shapely
import yaml
from conftest import ROOT, planned_jobs, run_snakemake

from nadir.datasets.sample import CLASSES

pytestmark = pytest.mark.slow  # each test uses a pipeline run (about 50 s)

MODEL = "ssdlite320_mobilenet_v3_large"
RUN = f"sample/{MODEL}"
VAL_SCENES = ["V0000", "V0001"]


def inference_config(extra_scenes=()) -> dict:
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    # PNG chips (lossless) and every window chipped, so that evaluation saw exactly the windows,
    # and the pixels, that inference reads from the scene.
    config["chipping"] |= {"image_format": "png", "empty_keep": 1.0}
    evaluation = {"score_threshold": 0.01, "max_detections": 100, "batch_size": 8,
                  "scene_nms_iou": 0.3}
    config["evaluation"] = evaluation
    config["inference"] = {
        "runs": [RUN],
        "scenes": [f"raw/sample/val/images/{s}.tif" for s in VAL_SCENES] + list(extra_scenes),
        "score_threshold": evaluation["score_threshold"], "nms_iou": evaluation["scene_nms_iou"],
        "max_detections": evaluation["max_detections"], "batch_size": 3}
    return config


def config_args(path, config) -> list[str]:
    path.write_text(yaml.safe_dump(config))
    return ["--configfile", str(path), "--replace-workflow-config"]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("inference")
    args = config_args(workdir / "config.yaml", inference_config())
    run_snakemake(workdir, *args, "predict",
                  f"results/sample/models/{MODEL}/scene_predictions.json")
    return workdir, args


def gpkg_boxes_in_pixels(path, scene_tif) -> list[tuple]:
    """(category id, score, x0, y0, x1, y1) of every feature, mapped back to scene pixels."""
    with rasterio.open(scene_tif) as src:
        a, b, c, d, e, f = list(~src.transform)[:6]
    _, _, geometry, fields = pyogrio.raw.read(path)
    columns = dict(zip(pyogrio.read_info(path)["fields"], fields, strict=True))
    boxes = []
    for wkb, cid, score in zip(geometry, columns["category_id"], columns["score"], strict=True):
        ring = shapely.get_coordinates(shapely.from_wkb(wkb))
        pixels = np.array([(a * x + b * y + c, d * x + e * y + f) for x, y in ring])
        boxes.append((int(cid), float(score), *pixels.min(0), *pixels.max(0)))
    return sorted(boxes)


def test_features_equal_scene_evaluation_merge(predicted):
    workdir, _ = predicted
    scene_predictions = json.loads(
        (workdir / f"results/sample/models/{MODEL}/scene_predictions.json").read_text())
    id_of = {im["scene"]: im["id"] for im in scene_predictions["images"]}
    total = 0
    for scene in VAL_SCENES:
        expected = sorted((d["category_id"], d["score"], d["bbox"][0], d["bbox"][1],
                           d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3])
                          for d in scene_predictions["detections"] if d["image_id"] == id_of[scene])
        out = workdir / f"results/inference/{RUN}/{scene}"
        got = gpkg_boxes_in_pixels(out / "detections.gpkg",
                                   workdir / f"raw/sample/val/images/{scene}.tif")
        assert len(got) == len(expected) > 0
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        np.testing.assert_allclose(np.array([g[2:] for g in got]),
                                   np.array([e[2:] for e in expected]), rtol=0, atol=1e-6)
        summary = json.loads((out / "summary.json").read_text())
        assert sum(summary["per_class"].values()) == summary["detections"] == len(expected)
        windows = summary["windows"]
        assert windows["read"] + windows["nodata_skipped"] == windows["windows"] == 9
        assert summary["georeferenced"]
        total += len(expected)
    assert total == len(scene_predictions["detections"])


def test_files_read_back_with_ogr_and_crs(predicted):
    workdir, _ = predicted
    scene = VAL_SCENES[0]
    out = workdir / f"results/inference/{RUN}/{scene}"
    with rasterio.open(workdir / f"raw/sample/val/images/{scene}.tif") as src:
        crs, bounds = src.crs, src.bounds
        lon_lat = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    gpkg = pyogrio.read_info(out / "detections.gpkg")
    assert gpkg["driver"] == "GPKG" and gpkg["geometry_type"] == "Polygon"
    assert rasterio.crs.CRS.from_user_input(gpkg["crs"]) == crs
    x0, y0, x1, y1 = gpkg["total_bounds"]
    assert bounds.left <= x0 < x1 <= bounds.right and bounds.bottom <= y0 < y1 <= bounds.top
    geojson = pyogrio.read_info(out / "detections.geojson")
    assert geojson["crs"] == "EPSG:4326" and geojson["features"] == gpkg["features"]
    lon0, lat0, lon1, lat1 = geojson["total_bounds"]
    assert lon_lat[0] - 1e-9 <= lon0 < lon1 <= lon_lat[2] + 1e-9
    assert lon_lat[1] - 1e-9 <= lat0 < lat1 <= lon_lat[3] + 1e-9
    _, _, _, fields = pyogrio.raw.read(out / "detections.gpkg")
    columns = dict(zip(gpkg["fields"], fields, strict=True))
    run = json.loads((workdir / f"results/sample/models/{MODEL}/run.json").read_text())
    assert set(columns["model"]) == {MODEL} and set(columns["dataset"]) == {"sample"}
    assert len(set(columns["run_digest"])) == 1 and len(columns["run_digest"][0]) == 16
    assert set(columns["class"]) <= set(CLASSES)
    assert run["chipping"]["image_format"] == "png" and run["chipping"]["bands"] is None
    assert (out / "quicklook.png").read_bytes()[:4] == b"\x89PNG"


def test_adding_a_scene_plans_only_its_job(predicted, tmp_path):
    workdir, args = predicted
    assert planned_jobs(run_snakemake(workdir, *args, "predict", "--dry-run")) == {}
    shutil.copy(workdir / "raw/sample/val/images/V0000.tif", workdir / "new-scene.tif")
    added = config_args(tmp_path / "added.yaml",
                        inference_config([{"name": "harbour", "source": "new-scene.tif"}]))
    proc = run_snakemake(workdir, *added, "predict", "--dry-run")
    assert planned_jobs(proc) == {"predict_scene": 1, "predict": 1}
    assert f"results/inference/{RUN}/harbour/detections.gpkg" in proc.stdout
