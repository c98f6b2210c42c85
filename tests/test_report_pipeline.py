"""The tiny sample pipeline, then `snakemake --report`: every figure, entry and category."""

from __future__ import annotations

import base64
import csv
import json
import re

import pytest
from conftest import ROOT, planned_jobs, run_snakemake

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
}


def embedded_json(page: str, name: str):
    """The JSON the report embeds as `var <name> = ...;` in <script id="<name>">."""
    script = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', page, re.S)
    assert script, f"the report has no {name} block"
    return json.loads(script.group(1))


@pytest.mark.slow
def test_sample_pipeline_report_has_every_figure_and_opens_offline(tmp_path):
    config = ("--configfile", str(ROOT / "config/test.yaml"), "--replace-workflow-config")
    run = run_snakemake(tmp_path, *config)
    # The summary job prints the leaderboard in the terminal after every other job.
    assert "== nadir leaderboard ==" in run.stdout
    assert "| 1 | ssdlite320_mobilenet_v3_large |" in run.stdout
    run_snakemake(tmp_path, *config, "--report", "report.html")
    page = (tmp_path / "report.html").read_text()

    categories = {name: {sub: sorted(files) for sub, files in subs.items()}
                  for name, subs in embedded_json(page, "categories").items()}
    for name, subs in EXPECTED_CATEGORIES.items():
        assert categories.get(name) == subs, name
    results = embedded_json(page, "results")
    for subs in EXPECTED_CATEGORIES.values():
        for files in subs.values():
            for path in files:
                entry = results[path]
                assert entry["caption"].strip(), f"{path} has no caption"
                if path.endswith(".png"):
                    assert (tmp_path / path).read_bytes().startswith(PNG_MAGIC)
                    assert entry["data_uri"].startswith("data:image/png")
    assert results[f"{RUN}/pr.png"]["labels"] == {"dataset": "sample",
                                                  "model": "ssdlite320_mobilenet_v3_large"}
    rule_graph = page[page.index('<script id="rulegraph">'):]
    assert "evaluate_scenes" in rule_graph[:20000] and "plot_class_ap" in rule_graph[:20000]

    # Offline: scripts and styles are inline, nothing is fetched, and the tables nadir wrote
    # link to nothing either.
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=[\"']?https?:", page)
    assert not re.search(r"@import|url\([\"']?https?:", page)
    for table in ("results/leaderboard.html", "results/cost.html"):
        html = base64.b64decode(results[table]["data_uri"].split("base64,", 1)[1]).decode()
        assert "http" not in html

    # Every job left a benchmark; the cost table counts all but its own and the summary's.
    with open(tmp_path / "results/cost.csv", newline="") as fh:
        cost = {row["rule"]: row for row in csv.DictReader(fh)}
    benchmarks = {p.relative_to(tmp_path / "results/benchmarks").as_posix()
                  for p in (tmp_path / "results/benchmarks").rglob("*.tsv")}
    assert {"cost.tsv", "summary.tsv", "sample/evaluate_scenes-ssdlite320_mobilenet_v3_large.tsv",
            "sample/generate_sample.tsv"} <= benchmarks
    assert int(cost["total"]["jobs"]) == len(benchmarks) - 2 == 14
    assert cost["train"]["jobs"] == "1" and cost["chip"]["jobs"] == "2"
    with open(tmp_path / "results/leaderboard.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["rank"] == "1" and float(row["wall_seconds"]) > 0 and row["device"] == "cpu"
    scene = json.loads((tmp_path / RUN / "scene_metrics.json").read_text())
    assert scene["level"] == "scene" and scene["images"] == 2  # config/test.yaml: 2 val scenes

    # A scene-level setting reruns the scene scoring and what reads it, never the model.
    edited = tmp_path / "edited.yaml"
    edited.write_text((ROOT / "config/test.yaml").read_text()
                      + "evaluation:\n  scene_nms_iou: 0.5\n")
    dry = run_snakemake(tmp_path, "--configfile", str(edited), "--replace-workflow-config", "-n")
    assert planned_jobs(dry.stdout) == {
        "evaluate_scenes": 1, "plot_pr": 1, "plot_class_ap": 1, "leaderboard": 1, "cost": 1,
        "summary": 1, "all": 1}
