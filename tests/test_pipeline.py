"""The whole sample pipeline on local files: outputs, the report, what reruns after an edit,
and `snakemake predict` on the val scenes: the features of each scene are exactly the
scene-level evaluation's merged detections, the files read back with GDAL/OGR (CRS included),
and adding a scene to `inference:` plans only that scene's job.

Every test that reads the session's local sample run (conftest.local_sample_run) lives here, so
that under pytest-xdist the run is made once, on the worker that runs this module."""

import csv
import json
import shutil
import zipfile

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import rasterio.crs
import rasterio.warp
import shapely
import torch
from conftest import (
    GPU_RULES,
    INFERENCE_RUN,
    RUN_JOBS,
    SAMPLE_MODEL,
    SUMMARY_JOBS,
    TEST_CONFIG,
    VAL_SCENES,
    planned_jobs,
    run_snakemake,
    write_config,
)
from report_checks import PNG_MAGIC, check_printed_leaderboard, check_report, expected_categories

from nadir.datasets.sample import CLASSES
from nadir.storage.controller import OWNER_FILE

pytestmark = pytest.mark.slow
MODEL = SAMPLE_MODEL


@pytest.fixture
def finished_run(local_sample_run):
    """The session's local sample run (they only read it or dry-run on it)."""
    return local_sample_run.workdir, local_sample_run.args


def test_run_produces_leaderboard_and_per_run_files(finished_run):
    workdir, _ = finished_run
    with open(workdir / "results" / "leaderboard.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["dataset"], r["model"], r["rank"]) for r in rows] == [("sample", MODEL, "1")]
    assert int(rows[0]["iterations"]) == TEST_CONFIG["training"]["iterations"]
    assert (rows[0]["recipe"], rows[0]["pretrained"]) == ("common", "none")
    run_dir = workdir / "results" / "sample" / "models" / MODEL
    # The row carries the run's own scores: chip AP50 from metrics.json, scene AP and DOTA's
    # task-2 mAP from scene_metrics.json (the sample is DOTA-format; task 1 needs an oriented
    # model, so its column stays empty for this one).
    chip = json.loads((run_dir / "metrics.json").read_text())
    scene = json.loads((run_dir / "scene_metrics.json").read_text())
    assert float(rows[0]["AP50"]) == pytest.approx(chip["metrics"]["AP50"], abs=1e-4)
    assert float(rows[0]["scene_AP"]) == pytest.approx(scene["metrics"]["AP"], abs=1e-4)
    assert float(rows[0]["dota_task2_map"]) == pytest.approx(
        scene["protocols"]["dota_task2"]["map"], abs=1e-4)
    assert rows[0]["dota_task1_map"] == ""
    classes = [c["name"] for c in json.loads(
        (workdir / "results/sample/index/categories.json").read_text())]
    with zipfile.ZipFile(run_dir / "submission.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f"dota_task2/Task2_{c}.txt" for c in classes)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["metrics"]) >= {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"}
    assert metrics["images"] > 0 and metrics["objects"] > 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["hyperparameters"]["lr"] == 0.001
    assert run["versions"]["torch"]
    history = json.loads((run_dir / "train_log.json").read_text())
    assert [h["iteration"] for h in history] == [2, 4]
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((workdir / "results/sample/chips/manifest.json").read_text())
    assert manifest["params"]["size"] == TEST_CONFIG["chipping"]["size"]
    assert manifest["shards"] == TEST_CONFIG["chipping"]["shards"]
    assert manifest["totals"]["objects_truncated"] > 0


def test_the_controller_gave_its_folder_back(finished_run):
    """A local run claims its working directory while it runs (nadir.storage.controller) and removes
    its record when it ends; a second controller is stopped while one is there
    (tests/test_controller.py, and on S3 tests/test_s3_pipeline.py)."""
    workdir, _ = finished_run
    assert (workdir / "results" / "leaderboard.csv").exists()
    assert not (workdir / OWNER_FILE).exists()


def test_second_run_does_nothing(finished_run, tmp_path):
    """Not even with other checkpoint settings (the run wrote one every 2 iterations)."""
    workdir, _ = finished_run
    assert planned_jobs(run_snakemake(workdir, *write_config(tmp_path / "plain.yaml"),
                                      "--dry-run")) == {}


def test_learning_rate_edit_reruns_only_that_model(finished_run, tmp_path):
    """...and a node-local chip cache set besides reruns nothing more, but the jobs that read
    chips (train, evaluate, plot_detections) ask for its size in disk (their pods' ephemeral
    storage) on top of what they asked before; the others ask for what they did."""
    workdir, _ = finished_run

    def lr(config, streaming=None):
        config["models"].update({MODEL: {"lr": 0.0005}})
        config.update({"streaming": streaming} if streaming else {})

    plain = run_snakemake(workdir, *write_config(tmp_path / "lr.yaml", lr), "--dry-run",
                          planner=True)
    jobs = planned_jobs(plain)
    # and the inference on the val scenes, which uses that model
    assert jobs == {**dict.fromkeys(RUN_JOBS + SUMMARY_JOBS, 1), "predict_scene": 2,
                    "predict_outputs": 2}
    cache = {"cache_dir": str(tmp_path / "cache"), "cache_gib": 3}
    cached = run_snakemake(workdir, *write_config(tmp_path / "cache.yaml",
                                                  lambda c: lr(c, cache)), "--dry-run",
                           planner=True)
    assert planned_jobs(cached) == jobs
    before, after = disk_requests(plain), disk_requests(cached)
    reading_chips = {"train", "evaluate", "plot_detections"}
    assert reading_chips <= before.keys() and before.keys() == after.keys()
    assert after == {rule: [mb + 3 * 1024 * (rule in reading_chips) for mb in requests]
                     for rule, requests in before.items()}


def disk_requests(proc) -> dict[str, list[int]]:
    """disk_mb of each planned job, by rule, from tests/planned_resources.py's listing."""
    line = next(line for line in proc.stdout.splitlines() if line.startswith("PLANNED "))
    requests: dict[str, list[int]] = {}
    for rule, resources in json.loads(line.removeprefix("PLANNED ")):
        if "disk_mb" in resources:
            requests.setdefault(rule, []).append(int(resources["disk_mb"]))
    return requests


def test_second_model_adds_only_its_jobs(finished_run, tmp_path):
    workdir, _ = finished_run
    args = write_config(tmp_path / "two.yaml",
                        lambda c: c["models"].update({"fcos_resnet18_fpn": {}}))
    proc = run_snakemake(workdir, *args, "--dry-run")
    assert planned_jobs(proc) == dict.fromkeys(RUN_JOBS + SUMMARY_JOBS, 1)
    missing = missing_outputs(proc)
    assert any("models/fcos_resnet18_fpn/model.pt" in line for line in missing)
    assert not any(f"models/{MODEL}/" in line for line in missing)


def missing_outputs(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if "Missing output files" in line]


def test_editing_a_sweep_cell_reruns_only_that_cell(finished_run, tmp_path):
    workdir, _ = finished_run
    for lr in (0.0005, 0.0002):  # a two-cell sweep, then its second cell edited
        args = write_config(tmp_path / f"sweep-{lr}.yaml", lambda c, lr=lr: c.update(
            sweeps={MODEL: {"cells": [{}, {"lr": lr}]}}))
        proc = run_snakemake(workdir, *args, "--dry-run")
        assert planned_jobs(proc) == dict.fromkeys(RUN_JOBS + SUMMARY_JOBS, 1)
        missing = missing_outputs(proc)
        assert any(f"models/{MODEL}--lr-{lr}/model.pt" in line for line in missing)
        assert not any(f"models/{MODEL}/" in line for line in missing)  # the {} cell is done


def test_more_repeats_add_only_the_new_seeds(finished_run, tmp_path):
    workdir, _ = finished_run
    args = write_config(tmp_path / "repeats.yaml", lambda c: c.update(repeats=3))
    proc = run_snakemake(workdir, *args, "--dry-run")
    assert planned_jobs(proc) == {**dict.fromkeys(RUN_JOBS, 2), **dict.fromkeys(SUMMARY_JOBS, 1)}
    trained = {line.split("models/")[1].split("/")[0] for line in missing_outputs(proc)
               if "model.pt" in line}
    assert trained == {f"{MODEL}--repeat-2", f"{MODEL}--repeat-3"}


def test_bad_label_line_fails_with_file_and_line_and_keeps_results(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run[0], workdir, symlinks=True)
    args = write_config(tmp_path / "config.yaml")
    label = workdir / "raw" / "sample" / "files" / "00-train" / "labelTxt" / "T0001.txt"
    lines = label.read_text().splitlines()
    lines[3] = "1 2 3 4 5 6 7 plane 0"
    label.write_text("\n".join(lines) + "\n")
    leaderboard = (workdir / "results" / "leaderboard.csv").read_text()
    proc = run_snakemake(workdir, *args, check=False)
    assert proc.returncode != 0
    log = (workdir / "logs" / "sample" / "index.log").read_text()
    assert "T0001.txt, line 4: expected x1 y1 x2 y2 x3 y3 x4 y4" in log
    assert "got 7 numbers" in log
    assert (workdir / "results" / "leaderboard.csv").read_text() == leaderboard
    assert (workdir / "results" / "sample" / "models" / MODEL / "model.pt").exists()


def test_malformed_config_stops_before_any_job(finished_run, tmp_path):
    workdir, _ = finished_run
    args = write_config(tmp_path / "bad.yaml", lambda c: c["training"].update(lrr=1))
    proc = run_snakemake(workdir, *args, check=False)
    assert proc.returncode != 0
    assert "config key training: unknown key(s) ['lrr']" in proc.stderr
    assert "Job stats" not in proc.stdout + proc.stderr


def test_sample_pipeline_report_has_every_figure_and_opens_offline(local_sample_run):
    workdir = local_sample_run.workdir
    check_printed_leaderboard(local_sample_run.run.stdout)
    check_report((workdir / "report.html").read_text(), ["sample"])
    for subs in expected_categories(["sample"]).values():
        for path in (p for files in subs.values() for p in files if p.endswith(".png")):
            assert (workdir / path).read_bytes().startswith(PNG_MAGIC)

    # Every job left a benchmark; the cost table counts all but its own and the summary's.
    with open(workdir / "results/cost.csv", newline="") as fh:
        cost = {row["rule"]: row for row in csv.DictReader(fh)}
    # (the cost table leaves out the inference jobs: workflow/rules/report.smk, cost_jobs)
    benchmarks = {p.relative_to(workdir / "results/benchmarks").as_posix()
                  for p in (workdir / "results/benchmarks").rglob("*.tsv")} - {
        f"inference/sample/{MODEL}/{scene}{job}.tsv" for scene in VAL_SCENES
        for job in ("", "-outputs")}
    assert {"cost.tsv", "summary.tsv", "sample/evaluate_scenes-ssdlite320_mobilenet_v3_large.tsv",
            "sample/dataset_stats.tsv"} <= benchmarks
    assert int(cost["total"]["jobs"]) == len(benchmarks) - 2 == 16
    assert cost["train"]["jobs"] == "1" and cost["chip"]["jobs"] == "2"
    with open(workdir / "results/leaderboard.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["rank"] == "1" and float(row["wall_seconds"]) > 0 and row["device"] == "cpu"
    scene = json.loads((workdir / f"results/sample/models/{MODEL}/scene_metrics.json").read_text())
    assert scene["level"] == "scene" and scene["images"] == 2  # config/test.yaml: 2 val scenes

    # A scene-level setting (the merge's IoU, the benchmark protocols) reruns the scene scoring
    # and what reads it, never the model; the merge's IoU is inference's too, so it reruns the
    # inference merge (on the 2 val scenes) as well, but not its model step. No job the
    # Kubernetes profiles give a GPU reruns.
    scene_jobs = {"evaluate_scenes": 1, "plot_pr": 1, "plot_class_ap": 1, "compare": 1,
                  "leaderboard": 1, "cost": 1, "summary": 1, "all": 1}
    for evaluation, jobs in (({"scene_nms_iou": 0.5}, {**scene_jobs, "predict_outputs": 2}),
                             ({"protocols": {"sample": ["coco"]}}, scene_jobs)):
        edited = write_config(workdir / "edited.yaml",
                              lambda c, e=evaluation: c["evaluation"].update(e))
        dry = run_snakemake(workdir, *edited, "-n")
        assert planned_jobs(dry) == jobs, evaluation
        assert not set(jobs) & GPU_RULES


def test_sample_run_records_its_config_and_checkpoint_settings_never_retrain(
        local_sample_run, tmp_path):
    """The session's sample run wrote a checkpoint every 2 iterations."""
    work = local_sample_run.workdir
    run_dir = work / "results" / "sample" / "models" / "ssdlite320_mobilenet_v3_large"
    resolved = json.loads((run_dir / "resolved_config.json").read_text())
    assert resolved["hyperparameters"]["iterations"] == 4
    # the shared recipe, as the sample trains: AdamW, 4 iterations of 2 chips, no scaling
    assert {k: resolved["recipe"][k] for k in ("recipe", "optimizer", "lr", "iterations",
                                               "global_batch", "clip_grad_norm")} == {
        "recipe": "common", "optimizer": "adamw", "lr": 0.001, "iterations": 4,
        "global_batch": 2, "clip_grad_norm": 10.0}
    assert resolved["checkpoints"]["every"] == 2
    assert resolved["model"]["backend"] == "torchvision"
    assert len(resolved["inputs"]["train_coco"]) == 16
    assert resolved["code"]["source_sha256"] and resolved["versions"]["torch"]
    log = work / "logs" / "sample" / "train-ssdlite320_mobilenet_v3_large.log"
    assert "checkpoint at iteration 2 written to checkpoints/sample/" in log.read_text()
    assert not list((work / "checkpoints").rglob("ckpt-*.pt"))
    moved = write_config(tmp_path / "moved.yaml", lambda c: c.update(
        checkpoints={"every": 3, "location": str(tmp_path / "ck")}))
    assert planned_jobs(run_snakemake(work, *moved, "-n")) == {}


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


def test_inference_features_equal_scene_evaluation_merge(finished_run):
    workdir, _ = finished_run
    scene_predictions = json.loads(
        (workdir / f"results/sample/models/{MODEL}/scene_predictions.json").read_text())
    id_of = {im["scene"]: im["id"] for im in scene_predictions["images"]}
    total = 0
    for scene in VAL_SCENES:
        expected = sorted((d["category_id"], d["score"], d["bbox"][0], d["bbox"][1],
                           d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3])
                          for d in scene_predictions["detections"] if d["image_id"] == id_of[scene])
        out = workdir / f"results/inference/{INFERENCE_RUN}/{scene}"
        got = gpkg_boxes_in_pixels(out / "detections.gpkg",
                                   workdir / f"raw/sample/files/01-val/images/{scene}.tif")
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


def test_inference_files_read_back_with_ogr_and_crs(finished_run):
    workdir, _ = finished_run
    scene = VAL_SCENES[0]
    out = workdir / f"results/inference/{INFERENCE_RUN}/{scene}"
    with rasterio.open(workdir / f"raw/sample/files/01-val/images/{scene}.tif") as src:
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
    # The windows were cut with the chip parameters the model carries: the chip manifest's.
    saved = torch.load(workdir / f"results/sample/models/{MODEL}/model.pt", weights_only=True)
    manifest = json.loads((workdir / "results/sample/chips/manifest.json").read_text())
    assert saved["chipping"] == manifest["params"] and saved["chipping"]["image_format"] == "png"
    assert "chipping" not in run  # one home: the model
    assert (out / "quicklook.png").read_bytes()[:4] == b"\x89PNG"


def test_adding_an_inference_scene_plans_only_its_job(finished_run, tmp_path):
    workdir, args = finished_run
    assert planned_jobs(run_snakemake(workdir, *args, "predict", "--dry-run")) == {}
    shutil.copy(workdir / "raw/sample/files/01-val/images/V0000.tif", workdir / "new-scene.tif")
    added = write_config(tmp_path / "added.yaml", lambda c: c["inference"]["scenes"].append(
        {"name": "harbour", "source": "new-scene.tif"}))
    proc = run_snakemake(workdir, *added, "predict", "--dry-run")
    assert planned_jobs(proc) == {"predict_scene": 1, "predict_outputs": 1, "predict": 1}
    assert f"results/inference/{INFERENCE_RUN}/harbour/detections.gpkg" in proc.stdout
