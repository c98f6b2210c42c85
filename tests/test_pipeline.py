"""The whole sample pipeline on local files: outputs, the report, and what reruns after an edit.

Every test that reads the session's local sample run (conftest.local_sample_run) lives here, so
that under pytest-xdist the run is made once, on the worker that runs this module."""

import csv
import json
import shutil
import zipfile

import pytest
from conftest import (
    ROOT,
    RUN_JOBS,
    SAMPLE_MODEL,
    SUMMARY_JOBS,
    TEST_CONFIG,
    planned_jobs,
    run_snakemake,
    write_config,
)
from report_checks import (
    EXPECTED_CATEGORIES,
    PNG_MAGIC,
    RUN,
    check_printed_leaderboard,
    check_report,
)

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
    assert 0.0 <= float(rows[0]["AP50"]) <= 1.0
    assert int(rows[0]["iterations"]) == TEST_CONFIG["training"]["iterations"]
    # The sample is DOTA-format: DOTA's task-2 protocol scores it; task 1 needs an oriented
    # model, so its column stays empty for this one.
    assert 0.0 <= float(rows[0]["dota_task2_map"]) <= 1.0 and rows[0]["dota_task1_map"] == ""
    run_dir = workdir / "results" / "sample" / "models" / MODEL
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


def test_second_run_does_nothing(finished_run, tmp_path):
    """Not even with other checkpoint settings (the run wrote one every 2 iterations)."""
    workdir, _ = finished_run
    assert planned_jobs(run_snakemake(workdir, *write_config(tmp_path / "plain.yaml"),
                                      "--dry-run")) == {}


def test_learning_rate_edit_reruns_only_that_model(finished_run, tmp_path):
    workdir, _ = finished_run
    args = write_config(tmp_path / "lr.yaml",
                        lambda c: c["models"].update({MODEL: {"lr": 0.0005}}))
    jobs = planned_jobs(run_snakemake(workdir, *args, "--dry-run"))
    assert jobs == dict.fromkeys(RUN_JOBS + SUMMARY_JOBS, 1)


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
    label = workdir / "raw" / "sample" / "train" / "labelTxt" / "T0001.txt"
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
    check_report((workdir / "report.html").read_text())
    for subs in EXPECTED_CATEGORIES.values():
        for path in (p for files in subs.values() for p in files if p.endswith(".png")):
            assert (workdir / path).read_bytes().startswith(PNG_MAGIC)

    # Every job left a benchmark; the cost table counts all but its own and the summary's.
    with open(workdir / "results/cost.csv", newline="") as fh:
        cost = {row["rule"]: row for row in csv.DictReader(fh)}
    benchmarks = {p.relative_to(workdir / "results/benchmarks").as_posix()
                  for p in (workdir / "results/benchmarks").rglob("*.tsv")}
    assert {"cost.tsv", "summary.tsv", "sample/evaluate_scenes-ssdlite320_mobilenet_v3_large.tsv",
            "sample/generate_sample.tsv"} <= benchmarks
    assert int(cost["total"]["jobs"]) == len(benchmarks) - 2 == 15
    assert cost["train"]["jobs"] == "1" and cost["chip"]["jobs"] == "2"
    with open(workdir / "results/leaderboard.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["rank"] == "1" and float(row["wall_seconds"]) > 0 and row["device"] == "cpu"
    scene = json.loads((workdir / RUN / "scene_metrics.json").read_text())
    assert scene["level"] == "scene" and scene["images"] == 2  # config/test.yaml: 2 val scenes

    # A scene-level setting (the merge's IoU, the benchmark protocols) reruns the scene scoring
    # and what reads it, never the model.
    edited = workdir / "edited.yaml"
    for evaluation in ("  scene_nms_iou: 0.5\n", "  protocols:\n    sample: [coco]\n"):
        edited.write_text((ROOT / "config/test.yaml").read_text() + "evaluation:\n" + evaluation)
        dry = run_snakemake(workdir, "--configfile", str(edited), "--replace-workflow-config",
                            "-n")
        assert planned_jobs(dry) == {
            "evaluate_scenes": 1, "plot_pr": 1, "plot_class_ap": 1, "compare": 1,
            "leaderboard": 1, "cost": 1, "summary": 1, "all": 1}, evaluation


def test_sample_run_records_its_config_and_checkpoint_settings_never_retrain(
        local_sample_run, tmp_path):
    """The session's sample run wrote a checkpoint every 2 iterations."""
    work = local_sample_run.workdir
    run_dir = work / "results" / "sample" / "models" / "ssdlite320_mobilenet_v3_large"
    resolved = json.loads((run_dir / "resolved_config.json").read_text())
    assert resolved["hyperparameters"]["iterations"] == 4
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
