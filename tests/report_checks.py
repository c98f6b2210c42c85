"""What `snakemake --report` of a run of the sample model must hold, local or on S3: every
figure, entry and category, and nothing loaded from the network."""

from __future__ import annotations

import base64
import json
import re

from conftest import SAMPLE_MODEL as MODEL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def expected_categories(datasets: list[str]) -> dict[str, dict[str, list[str]]]:
    """category -> subcategory -> files, as the report of MODEL's runs on `datasets` must list
    them."""
    def per_dataset(path: str) -> dict[str, list[str]]:
        return {d: [path.format(dataset=d, run=f"results/{d}/models/{MODEL}")] for d in datasets}

    return {
        "Leaderboard": {"Other": ["results/leaderboard.html"]},
        "Cost": {"Other": ["results/cost.html"]},
        "Per-class AP": per_dataset("results/{dataset}/class_ap.png"),
        "Precision-recall curves": per_dataset("{run}/pr.png"),
        "Sample detections": per_dataset("{run}/detections.png"),
        "Training curves": per_dataset("{run}/loss.png"),
        "Comparisons": per_dataset("results/{dataset}/comparison.html"),
        "Datasets": {"Other": sorted(f"results/{d}/index/{f}" for d in datasets
                                     for f in ("stats.png", "summary.html"))},
    }


def embedded_json(page: str, name: str):
    """The JSON the report embeds as `var <name> = ...;` in <script id="<name>">."""
    script = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', page, re.S)
    assert script, f"the report has no {name} block"
    return json.loads(script.group(1))


def data(entry: dict) -> bytes:
    """The bytes of a report entry, from its data URI."""
    return base64.b64decode(entry["data_uri"].split("base64,", 1)[1])


def check_report(page: str, datasets: list[str], staged: str = "") -> None:
    """Every expected entry of `datasets` in its category with a caption, a PNG per figure
    type, the rule graph, and nothing loaded from the network. With remote storage the report
    names each file by its local copy, `staged` + path."""
    expected = expected_categories(datasets)
    categories = {name: {sub: sorted(f.removeprefix(staged) for f in files)
                         for sub, files in subs.items()}
                  for name, subs in embedded_json(page, "categories").items()}
    for name, subs in expected.items():
        assert categories.get(name) == subs, name
    results = {path.removeprefix(staged): entry
               for path, entry in embedded_json(page, "results").items()}
    for subs in expected.values():
        for files in subs.values():
            for path in files:
                entry = results[path]
                assert entry["caption"].strip(), f"{path} has no caption"
                if path.endswith(".png"):
                    assert entry["data_uri"].startswith("data:image/png")
                    assert data(entry).startswith(PNG_MAGIC)
    for dataset in datasets:
        assert results[f"results/{dataset}/models/{MODEL}/pr.png"]["labels"] == {
            "dataset": dataset, "model": MODEL}
    rule_graph = page[page.index('<script id="rulegraph">'):]
    assert "evaluate_scenes" in rule_graph[:20000] and "plot_class_ap" in rule_graph[:20000]

    # Offline: scripts and styles are inline, nothing is fetched, and the tables nadir wrote
    # link to nothing either.
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=[\"']?https?:", page)
    assert not re.search(r"@import|url\([\"']?https?:", page)
    for table in ["results/leaderboard.html", "results/cost.html",
                  *(f"results/{d}/comparison.html" for d in datasets)]:
        assert b"http" not in data(results[table])


def check_printed_leaderboard(stdout: str) -> None:
    """The summary job prints the leaderboard in the terminal after every other job."""
    assert "== nadir leaderboard ==" in stdout
    assert f"| 1 | {MODEL} |" in stdout
