"""The tiny sample pipeline, then `snakemake --report`: every figure, entry and category."""

from __future__ import annotations

import base64
import csv
import json
import re

import pytest
from conftest import ROOT, S3_BUCKET, planned_jobs, run_snakemake

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN = "results/sample/models/ssdlite320_mobilenet_v3_large"
# category -> subcategory -> files, as the report must list them.
EXPECTED_CATEGORIES = {
    "Leaderboard": {"Other": ["results/leaderboard.html"]},
    "Cost": {"Other": ["results/cost.html"]},
    "Per-class AP": {"sample": ["results/sample/class_ap.png"]},
    "Precision-recall curves": {"sample": [f"{RUN}/pr.png"]},
    "Sample detections": {"sample": [f"{RUN}/detections.png"]},
    "Training curves": {"sample": [f"{RUN}/loss.png"]},
    "Comparisons": {"sample": ["results/sample/comparison.html"]},
}


def embedded_json(page: str, name: str):
    """The JSON the report embeds as `var <name> = ...;` in <script id="<name>">."""
    script = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', page, re.S)
    assert script, f"the report has no {name} block"
    return json.loads(script.group(1))


def data(entry: dict) -> bytes:
    """The bytes of a report entry, from its data URI."""
    return base64.b64decode(entry["data_uri"].split("base64,", 1)[1])


def check_report(page: str, staged: str = "") -> None:
    """Every expected entry in its category with a caption, a PNG per figure type, the rule
    graph, and nothing loaded from the network. With remote storage the report names each
    file by its local copy, `staged` + path."""
    categories = {name: {sub: sorted(f.removeprefix(staged) for f in files)
                         for sub, files in subs.items()}
                  for name, subs in embedded_json(page, "categories").items()}
    for name, subs in EXPECTED_CATEGORIES.items():
        assert categories.get(name) == subs, name
    results = {path.removeprefix(staged): entry
               for path, entry in embedded_json(page, "results").items()}
    for subs in EXPECTED_CATEGORIES.values():
        for files in subs.values():
            for path in files:
                entry = results[path]
                assert entry["caption"].strip(), f"{path} has no caption"
                if path.endswith(".png"):
                    assert entry["data_uri"].startswith("data:image/png")
                    assert data(entry).startswith(PNG_MAGIC)
    assert results[f"{RUN}/pr.png"]["labels"] == {"dataset": "sample",
                                                  "model": "ssdlite320_mobilenet_v3_large"}
    rule_graph = page[page.index('<script id="rulegraph">'):]
    assert "evaluate_scenes" in rule_graph[:20000] and "plot_class_ap" in rule_graph[:20000]

    # Offline: scripts and styles are inline, nothing is fetched, and the tables nadir wrote
    # link to nothing either.
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=[\"']?https?:", page)
    assert not re.search(r"@import|url\([\"']?https?:", page)
    for table in ("results/leaderboard.html", "results/cost.html",
                  "results/sample/comparison.html"):
        assert b"http" not in data(results[table])


def check_printed_leaderboard(stdout: str) -> None:
    """The summary job prints the leaderboard in the terminal after every other job."""
    assert "== nadir leaderboard ==" in stdout
    assert "| 1 | ssdlite320_mobilenet_v3_large |" in stdout


@pytest.mark.slow
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


@pytest.mark.slow
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
