"""The whole pipeline on a DOTA-format and an xView-format dataset made by the tests: fetched
from placed files (a zip and a folder) and over HTTP, then indexed, chipped, trained (a few
iterations) and evaluated, with every file in S3 (SeaweedFS). One run: the S3 run asserts
everything a local run would (the local storage path of every rule is the session's
local_sample_run in tests/conftest.py), and its files are read back from the bucket."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
import yaml
from conftest import ROOT, SAMPLE_MODEL, planned_jobs, run_snakemake
from dataset_builders import FileServer, make_dota, make_xview, sha256

from nadir.datasets import dota, xview

pytestmark = pytest.mark.slow
MODEL = SAMPLE_MODEL  # config/test.yaml's one model


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    dota_sources = make_dota(root / "dota", train=3, val=2, size=320)
    built = make_xview(root / "xview", images=4, size=320)
    server = FileServer(root / "xview")
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["datasets"] = {
        "dota15": {"format": "dota", "version": "v1.5", "source": [
            {"url": str(dota_sources["train"]), "split": "train",
             "sha256": sha256(dota_sources["train"])},
            {"url": str(dota_sources["val"]), "split": "val"}]},
        "xv": {"format": "xview", "split": {"val_fraction": 0.25, "seed": 1}, "source": [
            {"url": f"{server.url}/{built['images'].name}", "sha256": sha256(built["images"])},
            {"url": f"{server.url}/{built['labels'].name}"}]},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    yield path, built
    server.stop()


def _check_results(read, built: dict) -> None:
    """`read(relative path) -> text` of the finished run's files."""
    with_header = list(csv.DictReader(read("results/leaderboard.csv").splitlines()))
    assert sorted(r["dataset"] for r in with_header) == ["dota15", "xv"]
    dota_train = json.loads(read("results/dota15/coco/train.json"))
    assert [c["name"] for c in dota_train["categories"]] == dota.CLASSES_BY_VERSION["v1.5"]
    assert dota_train["annotations"], "DOTA chips carry objects"
    summary = json.loads(read("results/xv/index/summary.json"))
    assert summary["objects"] == built["objects"]
    assert summary["dropped"]["unnamed_type_id_75"] == 1
    assert summary["bad_input"]["skipped"]["label_without_image"] == 1
    assert summary["scenes"] == {"train": 3, "val": 1}
    assert len(json.loads(read("results/xv/coco/val.json"))["categories"]) == len(xview.CLASSES)
    stats = json.loads(read("results/xv/index/stats.json"))
    assert sum(stats["objects"].values()) == built["objects"]
    manifest = json.loads(read("results/xv/chips/manifest.json"))
    assert sorted(manifest["scenes"]) == ["1000", "1001", "1002", "1003"]
    assert {s["shard"] for s in manifest["scenes"].values()} == {0, 1}
    # Each dataset is scored by its benchmark's protocol too (evaluation.protocols defaults).
    board = {r["dataset"]: r for r in with_header}
    assert float(board["xv"]["xview_map"]) >= 0 and board["xv"]["dota_task2_map"] == ""
    assert float(board["dota15"]["dota_task2_map"]) >= 0 and board["dota15"]["xview_map"] == ""
    xview_scores = json.loads(read(f"results/xv/models/{MODEL}/scene_metrics.json"))
    assert set(xview_scores["protocols"]) == {"xview"}
    assert xview_scores["protocols"]["xview"]["status"] == "ok"
    assert {"map_small", "map_rare", "precision", "recall", "f1"} <= set(
        xview_scores["protocols"]["xview"])
    dota_scores = json.loads(read(f"results/dota15/models/{MODEL}/scene_metrics.json"))
    assert [r["name"] for r in dota_scores["protocols"]["dota_task2"]["per_class"]] == \
        dota.CLASSES_BY_VERSION["v1.5"]
    assert dota_scores["protocols"]["dota_task1"]["status"] == "not computed"  # no polygons


def _check_submissions(read_bytes) -> None:
    """The benchmarks' submission files: xView's one per val image, DOTA's one per class.
    `read_bytes(relative path) -> bytes` of the finished run's files."""
    val_scenes = [r["scene"] for r in csv.DictReader(
        read_bytes("results/xv/index/scenes.csv").decode().splitlines()) if r["split"] == "val"]
    with zipfile.ZipFile(io.BytesIO(
            read_bytes(f"results/xv/models/{MODEL}/submission.zip"))) as archive:
        assert sorted(archive.namelist()) == sorted(f"xview/{s}.tif.txt" for s in val_scenes)
        for name in archive.namelist():
            for line in archive.read(name).decode().splitlines():
                xmin, ymin, xmax, ymax, type_id, score = line.split()
                assert int(type_id) in xview.CLASS_NAMES and 0 < float(score) <= 1
                assert float(xmin) < float(xmax) and float(ymin) < float(ymax)
    with zipfile.ZipFile(io.BytesIO(
            read_bytes(f"results/dota15/models/{MODEL}/submission.zip"))) as archive:
        assert sorted(archive.namelist()) == sorted(
            f"dota_task2/Task2_{c}.txt" for c in dota.CLASSES_BY_VERSION["v1.5"])


def test_pipeline_on_dota_and_xview_in_s3(tmp_path, config_file, s3):
    path, built = config_file
    args = ("--configfile", str(path), "--replace-workflow-config",
            "--default-storage-provider", "s3",
            "--default-storage-prefix", "s3://nadir-datasets/run",
            "--storage-s3-endpoint-url", s3.endpoint)
    run_snakemake(tmp_path / "a", *args, env=s3.env())
    client = s3.client()

    def read_bytes(rel: str) -> bytes:
        return client.get_object(Bucket="nadir-datasets", Key=f"run/{rel}")["Body"].read()

    def read(rel: str) -> str:
        return read_bytes(rel).decode()

    _check_results(read, built)
    _check_submissions(read_bytes)
    assert read_bytes("results/dota15/index/stats.png")[:4] == b"\x89PNG"
    assert json.loads(read("raw/xv/manifest.json"))["format"] == "xview"
    # (The report of a run on S3, its dataset statistics included: tests/test_s3_pipeline.py.)
    # A fresh controller (another laptop or CI) finds the manifest in storage: nothing to redo.
    rerun = run_snakemake(tmp_path / "b", *args, "--dry-run", env=s3.env())
    assert planned_jobs(rerun) == {}
    logs = [o["Key"] for o in client.list_objects_v2(Bucket="nadir-datasets",
                                                      Prefix="run/logs/")["Contents"]]
    assert "run/logs/xv/fetch.log" in logs
    assert not any(s3.secret_key in read(key[len("run/"):]) for key in logs)
