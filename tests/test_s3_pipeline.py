"""The whole pipeline with S3 as the default storage, on a real SeaweedFS server, on DOTA and xView
as they are distributed, in miniature (DOTA's Drive folders placed, xView's archives over HTTP):
fetched, indexed, chipped, trained (a few iterations), evaluated by COCO and by each benchmark's
own protocol, applied to a RarePlanes tile in the replica public bucket, and reported; every
file is read back from the bucket.

Every test that reads the session's S3 run (conftest.s3_run) lives here, so that under
pytest-xdist the run is made once, on the worker that runs this module. The local storage path
of every rule is the session's local_sample_run (tests/test_pipeline.py)."""

import csv
import html
import io
import json
import zipfile

import pytest
from conftest import (
    PRESIGNED_QUERY,
    PRESIGNED_SECRETS,
    S3_BUCKET,
    SAMPLE_MODEL,
    planned_jobs,
    run_snakemake,
    s3_args,
)
from report_checks import check_printed_leaderboard, check_report, data, embedded_json

from nadir.datasets import dota, xview
from nadir.storage.controller import OWNER_FILE

pytestmark = pytest.mark.slow
MODEL = SAMPLE_MODEL  # config/test.yaml's one model
BUCKET = S3_BUCKET
DATASETS = ["dota15", "xv"]


def keys(s3, prefix):
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {obj["Key"][len(prefix) + 1:] for page in pages for obj in page.get("Contents", [])}


def read_bytes(s3, path: str) -> bytes:
    """A file of the run, from the bucket."""
    return s3.client().get_object(Bucket=BUCKET, Key=f"run1/{path}")["Body"].read()


def read(s3, path: str) -> str:
    return read_bytes(s3, path).decode()


def test_every_output_lands_in_the_bucket(s3, s3_run):
    stored = keys(s3, "run1")
    for path in ["results/leaderboard.csv", "results/leaderboard.html",
                 f"results/xv/models/{MODEL}/model.pt", f"results/xv/models/{MODEL}/metrics.json",
                 "results/dota15/chips/shard-000.tar", "results/dota15/chips/manifest.json",
                 "results/dota15/coco/val.json", "raw/xv/manifest.json",
                 "logs/xv/fetch.log", "logs/dota15/index.log",
                 "results/dota15/index/summary.html",
                 f"results/inference/dota15/{MODEL}/{s3_run.tile}/summary.json"]:
        assert path in stored, f"{path} missing from the bucket; it holds {sorted(stored)}"
    assert not (s3_run.workdir / "results").exists()  # nothing beside the controller
    # The jobs that read chips read the shards where they are (never staged: docs/streaming.md)
    for log in (f"logs/xv/train-{MODEL}.log", f"logs/dota15/evaluate-{MODEL}.log"):
        assert "reading chips where they are: 2 shard(s) on S3" in read(s3, log)


def test_each_format_goes_through_every_stage(s3, s3_run):
    built = s3_run.xview
    with_header = list(csv.DictReader(read(s3, "results/leaderboard.csv").splitlines()))
    assert sorted(r["dataset"] for r in with_header) == DATASETS
    dota_train = json.loads(read(s3, "results/dota15/coco/train.json"))
    assert [c["name"] for c in dota_train["categories"]] == dota.CLASSES_BY_VERSION["v1.5"]
    assert dota_train["annotations"], "DOTA chips carry objects"
    assert read_bytes(s3, "results/dota15/index/stats.png")[:4] == b"\x89PNG"
    assert json.loads(read(s3, "raw/xv/manifest.json"))["format"] == "xview"
    summary = json.loads(read(s3, "results/xv/index/summary.json"))
    assert summary["objects"] == built["objects"]
    assert summary["dropped"]["unnamed_type_id_75"] == 1
    assert summary["bad_input"]["skipped"]["label_without_image"] == 1
    assert summary["scenes"] == {"train": 3, "val": 1}
    assert len(json.loads(read(s3, "results/xv/coco/val.json"))["categories"]) == \
        len(xview.CLASSES)
    stats = json.loads(read(s3, "results/xv/index/stats.json"))
    assert sum(stats["objects"].values()) == built["objects"]
    manifest = json.loads(read(s3, "results/xv/chips/manifest.json"))
    assert sorted(manifest["scenes"]) == ["1000", "1001", "1002", "1003"]
    assert {s["shard"] for s in manifest["scenes"].values()} == {0, 1}


def test_silent_outcomes_are_warnings_in_the_summaries_and_the_report(s3, s3_run):
    """DOTA's Drive folders hold horizontal-box copies and a copy of part1.zip; the replica
    has 5 of v1.5's 16 classes; the test config's 192 px chips cannot hold its 270 px
    ground-track-field: each is a warning in summary.json / stats.json and on the dataset's
    page of report.html."""
    summary = json.loads(read(s3, "results/dota15/index/summary.json"))
    assert sorted(w["case"] for w in summary["warnings"]) == [
        "copy_set_aside", "empty_class", "label_variant_set_aside", "label_variant_set_aside"]
    stats = json.loads(read(s3, "results/dota15/index/stats.json"))
    assert stats["warnings"][:len(summary["warnings"])] == summary["warnings"]
    lost = [w["message"] for w in stats["warnings"] if w["case"] == "class_lost_in_chipping"]
    assert lost and all("the 192 px chips are too small for ground-track-field" in m
                        for m in lost)
    page = (s3_run.workdir / "report.html").read_text()
    entries = embedded_json(page, "results")
    [summary_page] = [e for path, e in entries.items()
                      if path.endswith("results/dota15/index/summary.html")]
    text = html.unescape(data(summary_page).decode())
    for warning in stats["warnings"]:
        assert warning["message"] in text
    assert "DOTA-v1.5_train_hbb" in text and "too small for ground-track-field" in text


def test_inference_on_a_rareplanes_tile_in_the_bucket_carries_its_sidecars_crs(
        s3, s3_run, rareplanes_bucket):
    """The tile is a PNG whose georeferencing is only in `<tile>.png.aux.xml` beside it in the
    public bucket: the predictions are placed by it."""
    out = f"results/inference/dota15/{MODEL}/{s3_run.tile}"
    summary = json.loads(read(s3, f"{out}/summary.json"))
    t = rareplanes_bucket["tiles"][s3_run.tile]["transform"]
    assert summary["crs"] == "EPSG:4326" and summary["georeferenced"]
    assert summary["transform"] == pytest.approx([t.a, t.b, t.c, t.d, t.e, t.f])
    features = json.loads(read(s3, f"{out}/detections.geojson"))["features"]
    for feature in features:
        for lon, lat in feature["geometry"]["coordinates"][0]:
            assert t.c - 1e-9 <= lon <= t.c + 64 * t.a + 1e-9
            assert t.f + 64 * t.e - 1e-9 <= lat <= t.f + 1e-9


def test_each_dataset_is_scored_by_its_benchmarks_protocol(s3, s3_run):
    """evaluation.protocols defaults: DOTA's Task 2 for DOTA, the xView scorer for xView."""
    board = {r["dataset"]: r for r in csv.DictReader(
        read(s3, "results/leaderboard.csv").splitlines())}
    assert float(board["xv"]["xview_map"]) >= 0 and board["xv"]["dota_task2_map"] == ""
    assert float(board["dota15"]["dota_task2_map"]) >= 0 and board["dota15"]["xview_map"] == ""
    xview_scores = json.loads(read(s3, f"results/xv/models/{MODEL}/scene_metrics.json"))
    assert set(xview_scores["protocols"]) == {"xview"}
    assert xview_scores["protocols"]["xview"]["status"] == "ok"
    assert {"map_small", "map_rare", "precision", "recall", "f1"} <= set(
        xview_scores["protocols"]["xview"])
    dota_scores = json.loads(read(s3, f"results/dota15/models/{MODEL}/scene_metrics.json"))
    assert [r["name"] for r in dota_scores["protocols"]["dota_task2"]["per_class"]] == \
        dota.CLASSES_BY_VERSION["v1.5"]
    assert dota_scores["protocols"]["dota_task1"]["status"] == "not computed"  # no polygons


def test_submission_files_follow_each_benchmark(s3, s3_run):
    """xView's: one file per val image; DOTA's: one per class."""
    val_scenes = [r["scene"] for r in csv.DictReader(
        read(s3, "results/xv/index/scenes.csv").splitlines()) if r["split"] == "val"]
    with zipfile.ZipFile(io.BytesIO(
            read_bytes(s3, f"results/xv/models/{MODEL}/submission.zip"))) as archive:
        assert sorted(archive.namelist()) == sorted(f"xview/{s}.tif.txt" for s in val_scenes)
        for name in archive.namelist():
            for line in archive.read(name).decode().splitlines():
                xmin, ymin, xmax, ymax, type_id, score = line.split()
                assert int(type_id) in xview.CLASS_NAMES and 0 < float(score) <= 1
                assert float(xmin) < float(xmax) and float(ymin) < float(ymax)
    with zipfile.ZipFile(io.BytesIO(
            read_bytes(s3, f"results/dota15/models/{MODEL}/submission.zip"))) as archive:
        assert sorted(archive.namelist()) == sorted(
            f"dota_task2/Task2_{c}.txt" for c in dota.CLASSES_BY_VERSION["v1.5"])


def test_a_fresh_controller_finds_everything_in_storage(s3, s3_run, tmp_path):
    """Another laptop, or CI, with an empty working directory: nothing to redo."""
    assert planned_jobs(run_snakemake(tmp_path, *s3_run.args, "--dry-run", env=s3.env())) == {}


def test_deleted_remote_output_reruns_only_its_dependants_from_an_empty_directory(
        s3, s3_run, tmp_path):
    # One dataset's comparison of its runs (a result `all` asks for; Snakemake, by design, does
    # not redo an intermediate file that nothing downstream needs again).
    comparison = "results/xv/comparison.json"
    s3.client().delete_object(Bucket=BUCKET, Key=f"run1/{comparison}")
    # A fresh, empty working directory: the jobs see nothing but the bucket.
    proc = run_snakemake(tmp_path, *s3_run.args, env=s3.env())
    # the comparison, then what reads it; nothing upstream, nothing of the other dataset
    assert planned_jobs(proc) == dict.fromkeys(["compare", "leaderboard", "cost", "summary",
                                                "all"], 1)
    assert comparison in keys(s3, "run1")


def test_credentials_never_reach_logs_or_outputs(s3, s3_run):
    texts = [s3_run.run.stdout, s3_run.run.stderr, s3_run.report.stdout, s3_run.report.stderr]
    texts += [p.read_text(errors="replace")
              for p in (s3_run.workdir / ".snakemake" / "log").glob("*")]
    for key in keys(s3, "run1"):
        if key.endswith((".log", ".json", ".csv", ".html")):
            texts.append(read_bytes(s3, key).decode(errors="replace"))
    assert len(texts) > 10
    for text in texts:
        assert s3.secret_key not in text
        assert s3.access_key not in text


def test_a_pre_signed_url_appears_in_no_log_record_report_or_command_line(s3, s3_run,
                                                                           tmp_path):
    """The xView archive and the inference scene come from URLs whose query is a secret
    (conftest.PRESIGNED_QUERY). The server got the whole URLs, yet no part of the secret is in
    the run's or the report's output, what Snakemake prints when it plans the fetch and predict
    jobs again, its logs and job records (which hold each job's params: the redacted URLs),
    any file of the working directory, or any object in the bucket; the fetch manifest and
    the inference summary record the redacted form."""
    for file in ("train_images.tgz", "1000.tif"):
        assert any(file in path and PRESIGNED_QUERY in path for path, _ in s3_run.served)
    printed = run_snakemake(tmp_path, *s3_run.args, "--dry-run", "--forcerun", "fetch",
                            "predict_scene", env=s3.env())
    texts = {"run": s3_run.run.stdout + s3_run.run.stderr,
             "planned": printed.stdout + printed.stderr,
             "report": s3_run.report.stdout + s3_run.report.stderr}
    for path in s3_run.workdir.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode(errors="replace")
    records = "".join(text for where, text in texts.items() if "/metadata/" in where)
    assert "/train_images.tgz?redacted-" in records  # the fetch job's params
    assert "/train_images/1000.tif?redacted-" in records  # the predict job's
    for key in keys(s3, "run1"):
        texts[key] = read_bytes(s3, key).decode(errors="replace")
    assert any("/metadata/" in where for where in texts) and "report.html" in str(list(texts))
    for secret in PRESIGNED_SECRETS:
        assert not [where for where, text in texts.items() if secret in text], secret
    manifest = json.loads(read(s3, "raw/xv/manifest.json"))
    assert "/train_images.tgz?redacted-" in manifest["sources"][0]["url"]
    summary = json.loads(read(s3, f"results/inference/dota15/{MODEL}/remote/summary.json"))
    assert "/train_images/1000.tif?redacted-" in summary["source"]
    assert summary["windows"]["read"] > 0


def test_a_second_controller_on_the_prefix_stops_before_any_job(s3, s3_run, tmp_path):
    """The run gave the prefix back when it ended. While another controller's record is
    there, a dry run still plans (it writes nothing), and a run with work to do stops at its
    start with a message naming the other controller, leaving the bucket as it was."""
    assert OWNER_FILE not in keys(s3, "run1")
    other = {"id": "f" * 32, "host": "laptop-of-bob", "pid": 777, "user": "bob",
             "workdir": "/home/bob/nadir", "started": "2026-12-07T10:00:00+00:00"}
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key=f"run1/{OWNER_FILE}", Body=json.dumps(other).encode())
    summary = client.head_object(Bucket=BUCKET, Key="run1/results/summary.txt")
    try:
        assert planned_jobs(run_snakemake(tmp_path / "dry", *s3_run.args, "--dry-run",
                                          "--forcerun", "summary", env=s3.env())) != {}
        proc = run_snakemake(tmp_path / "second", *s3_run.args, "--forcerun", "summary",
                             env=s3.env(), check=False)
        assert proc.returncode != 0
        assert "another controller is running on these results (pid 777 of bob on " \
               "laptop-of-bob" in proc.stderr
        assert "NADIR_TAKE_OVER=1" in proc.stderr
        after = client.head_object(Bucket=BUCKET, Key="run1/results/summary.txt")
        assert after["ETag"] == summary["ETag"] and after["LastModified"] == \
            summary["LastModified"]
        assert json.loads(read(s3, OWNER_FILE)) == other
    finally:
        client.delete_object(Bucket=BUCKET, Key=f"run1/{OWNER_FILE}")


def test_wrong_credentials_are_refused(s3, tmp_path):
    env = {**s3.env(), "SNAKEMAKE_STORAGE_S3_SECRET_KEY": "not-the-secret-key-at-all"}
    proc = run_snakemake(tmp_path, *s3_args(s3, "refused"), "--dry-run", env=env, check=False)
    assert proc.returncode != 0
    assert "not-the-secret-key-at-all" not in proc.stdout + proc.stderr


def test_report_and_cost_table_from_s3_storage(s3_run, s3):
    """Every rule sees only its staged inputs; the cost table reads benchmarks from the bucket;
    the local summary rule prints in the terminal."""
    check_printed_leaderboard(s3_run.run.stdout)
    page = (s3_run.workdir / "report.html").read_text()
    check_report(page, DATASETS, staged=f".snakemake/storage/s3/{S3_BUCKET}/run1/")
    assert s3.secret_key not in page
    rows = {r["rule"]: r for r in csv.DictReader(read(s3, "results/cost.csv").splitlines())}
    # per dataset: index, 2 chip shards, chip_manifest, coco, dataset_stats, plot_class_ap,
    # compare, and the run's train, evaluate, evaluate_chips, evaluate_scenes, loss_curve,
    # plot_pr, plot_detections; then the leaderboard (fetch is not in the table:
    # workflow/rules/report.smk, cost_jobs)
    assert rows["total"]["jobs"] == str(2 * 15 + 1)
    assert f"results/benchmarks/xv/evaluate_scenes-{MODEL}.tsv" in keys(s3, "run1")
