"""The sample pipeline with S3 as the default storage, on a real SeaweedFS server.

Every test that reads the session's S3 sample run (conftest.s3_sample_run) lives here, so that
under pytest-xdist the run is made once, on the worker that runs this module."""

import csv

import pytest
from conftest import S3_BUCKET, SAMPLE_MODEL, planned_jobs, run_snakemake, s3_args
from report_checks import check_printed_leaderboard, check_report

pytestmark = pytest.mark.slow
MODEL = SAMPLE_MODEL
BUCKET = S3_BUCKET


def keys(s3, prefix):
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {obj["Key"][len(prefix) + 1:] for page in pages for obj in page.get("Contents", [])}


@pytest.fixture
def s3_run(s3_sample_run):
    """The session's S3 sample run (prefix run1)."""
    return s3_sample_run.workdir, s3_sample_run.args, s3_sample_run.run


def test_every_output_lands_in_the_bucket(s3, s3_run):
    stored = keys(s3, "run1")
    for path in ["results/leaderboard.csv", "results/leaderboard.html",
                 f"results/sample/models/{MODEL}/model.pt",
                 f"results/sample/models/{MODEL}/metrics.json",
                 "results/sample/chips/shard-000.tar", "results/sample/chips/manifest.json",
                 "results/sample/coco/val.json", "raw/sample/train/images/T0000.tif",
                 "raw/sample/val/labelTxt/V0000.txt", "logs/sample/index.log"]:
        assert path in stored, f"{path} missing from the bucket; it holds {sorted(stored)}"


def test_rerun_is_a_no_op(s3, s3_run):
    workdir, args, _ = s3_run
    assert planned_jobs(run_snakemake(workdir, *args, "--dry-run", env=s3.env())) == {}


def test_deleted_remote_output_reruns_only_its_dependants_from_an_empty_directory(
        s3, s3_run, tmp_path):
    _, args, _ = s3_run
    metrics = f"results/sample/models/{MODEL}/metrics.json"
    s3.client().delete_object(Bucket=BUCKET, Key=f"run1/{metrics}")
    # A fresh, empty working directory: the jobs see nothing but the bucket.
    proc = run_snakemake(tmp_path, *args, env=s3.env())
    # evaluate rewrites predictions.json too, so everything reading the predictions reruns.
    assert planned_jobs(proc) == dict.fromkeys(
        ["evaluate", "evaluate_scenes", "plot_pr", "plot_detections", "plot_class_ap",
         "compare", "leaderboard", "cost", "summary", "all"], 1)
    assert f"results/sample/models/{MODEL}/metrics.json" in keys(s3, "run1")


def test_credentials_never_reach_logs_or_outputs(s3, s3_run):
    workdir, _, proc = s3_run
    texts = [proc.stdout, proc.stderr]
    texts += [p.read_text(errors="replace") for p in (workdir / ".snakemake" / "log").glob("*")]
    client = s3.client()
    for key in keys(s3, "run1"):
        if key.endswith((".log", ".json", ".csv", ".html")):
            texts.append(client.get_object(Bucket=BUCKET, Key=f"run1/{key}")["Body"].read()
                         .decode(errors="replace"))
    assert len(texts) > 10
    for text in texts:
        assert s3.secret_key not in text
        assert s3.access_key not in text


def test_wrong_credentials_are_refused(s3, tmp_path):
    env = {**s3.env(), "SNAKEMAKE_STORAGE_S3_SECRET_KEY": "not-the-secret-key-at-all"}
    proc = run_snakemake(tmp_path, *s3_args(s3, "refused"), "--dry-run", env=env, check=False)
    assert proc.returncode != 0
    assert "not-the-secret-key-at-all" not in proc.stdout + proc.stderr


def test_sample_pipeline_and_report_on_s3_storage(s3_sample_run, s3):
    """Every new rule sees only its staged inputs; the cost table reads benchmarks from the
    bucket; the local summary rule prints in the terminal; the keys leak nowhere."""
    run, report = s3_sample_run.run, s3_sample_run.report
    check_printed_leaderboard(run.stdout)
    page = (s3_sample_run.workdir / "report.html").read_text()
    check_report(page, staged=f".snakemake/storage/s3/{S3_BUCKET}/run1/")
    bucket = s3.client()
    cost = bucket.get_object(Bucket=S3_BUCKET, Key="run1/results/cost.csv")
    rows = {r["rule"]: r for r in csv.DictReader(cost["Body"].read().decode().splitlines())}
    assert rows["total"]["jobs"] == "15"
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=S3_BUCKET, Prefix="run1/")
            ["Contents"]]
    assert "run1/results/benchmarks/sample/evaluate_scenes-ssdlite320_mobilenet_v3_large.tsv" \
        in keys
    logs = "".join(bucket.get_object(Bucket=S3_BUCKET, Key=k)["Body"].read().decode()
                   for k in keys if k.startswith("run1/logs/"))
    for text in (run.stdout, run.stderr, report.stdout, report.stderr, page, logs):
        assert s3.secret_key not in text
