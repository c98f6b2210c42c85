"""The summarise stage: the leaderboard across (dataset, model) runs.

Every figure is in nadir.figures, the cost table in nadir.costs.
"""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path

from nadir.costs import TABLE_CSS, JobCost, read_benchmark, recorded_gpus

LEADERBOARD_METRICS = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"]
SCENE_METRICS = ["AP", "AP50", "AP75", "ARmax"]
LEADERBOARD_FIELDS = [
    "rank", "chip_rank", "dataset", "model", *LEADERBOARD_METRICS,
    *(f"scene_{m}" for m in SCENE_METRICS), "iterations", "train_seconds", "wall_seconds",
    "gpu_hours", "peak_memory_mb", "device", "train_chips", "val_chips", "val_scenes",
]
# The columns of the terminal and Markdown tables, with their headings.
SUMMARY_COLUMNS = {"rank": "rank", "model": "model", "scene_AP": "scene AP",
                   "scene_AP50": "scene AP50", "AP": "chip AP", "AP50": "chip AP50",
                   "iterations": "iterations", "wall_seconds": "wall s",
                   "gpu_hours": "GPU-h", "peak_memory_mb": "peak MB"}


@dataclass
class RunResult:
    """Everything known about one (dataset, model) run: its record, scores and job costs."""

    run: dict
    chip: dict
    scene: dict
    jobs: list[JobCost]


@dataclass(frozen=True)
class RunFiles:
    """The files a run's leaderboard row is read from."""

    run: Path  # run.json
    metrics: Path  # chip-level metrics.json
    scene_metrics: Path  # scene_metrics.json
    train_benchmark: Path  # the benchmark TSVs of its train, evaluate, evaluate_scenes jobs
    evaluate_benchmark: Path
    scene_benchmark: Path


def read_run_result(files: RunFiles) -> RunResult:
    """A run's record, chip and scene scores and job costs (GPUs from the devices recorded)."""
    run = json.loads(files.run.read_text())
    chip = json.loads(files.metrics.read_text())
    jobs = [read_benchmark(files.train_benchmark, "train", recorded_gpus(run, files.run)),
            read_benchmark(files.evaluate_benchmark, "evaluate",
                           recorded_gpus(chip, files.metrics)),
            read_benchmark(files.scene_benchmark, "evaluate_scenes")]
    return RunResult(run, chip, json.loads(files.scene_metrics.read_text()), jobs)


def summary_text(leaderboard_markdown: Path, cost_csv: Path) -> str:
    """The leaderboard and the total cost of the workflow's jobs, as the terminal shows them."""
    with open(cost_csv, newline="") as fh:
        total = list(csv.DictReader(fh))[-1]
    return (f"{Path(leaderboard_markdown).read_text()}\nCost of this workflow's jobs: "
            f"{total['jobs']} jobs, {total['wall_seconds']} s wall-clock, "
            f"{total['cpu_hours'] or 'n/a'} CPU-hours, {total['gpu_hours']} GPU-hours "
            "(per rule: results/cost.csv, and \"Cost\" in the report)\n")


def _rank(rows: list[dict], metric: str, column: str) -> None:
    """Number rows 1..n within each dataset by `metric`, best first (ties: chip AP, model)."""
    for dataset in {r["dataset"] for r in rows}:
        ranked = sorted((r for r in rows if r["dataset"] == dataset),
                        key=lambda r: (-r[metric], -r["AP"], r["model"]))
        for i, row in enumerate(ranked, start=1):
            row[column] = i


def leaderboard_rows(results: list[RunResult]) -> list[dict]:
    """One row per run; `rank` orders each dataset's runs by scene-level AP, `chip_rank` by
    chip-level AP, so a model that wins on chips but not on whole scenes shows it."""
    rows = []
    for r in results:
        memory = [j.peak_memory_mb for j in r.jobs if j.peak_memory_mb is not None]
        rows.append({
            "dataset": r.run["dataset"], "model": r.run["model"],
            **{m: r.chip["metrics"][m] for m in LEADERBOARD_METRICS},
            **{f"scene_{m}": r.scene["metrics"][m] for m in SCENE_METRICS},
            "iterations": r.run["training"]["iterations"],
            "train_seconds": r.run["training"]["seconds"],
            "wall_seconds": round(sum(j.wall_seconds for j in r.jobs), 2),
            "gpu_hours": round(sum(j.gpu_hours for j in r.jobs), 5),
            "peak_memory_mb": max(memory) if memory else None,
            "device": r.run["training"]["device"], "train_chips": r.run["training"]["chips"],
            "val_chips": r.chip["images"], "val_scenes": r.scene["images"],
        })
    _rank(rows, "scene_AP", "rank")
    _rank(rows, "AP", "chip_rank")
    rows.sort(key=lambda r: (r["dataset"], r["rank"]))
    return rows


def _text(value) -> str:
    return "n/a" if value is None else str(value)


def format_markdown(rows: list[dict]) -> str:
    """The leaderboard as Markdown, one table per dataset (also what the terminal shows)."""
    parts = []
    for dataset in sorted({r["dataset"] for r in rows}):
        parts += [f"### {dataset}", "",
                  "| " + " | ".join(SUMMARY_COLUMNS.values()) + " |",
                  "|" + "|".join("---:" if k not in ("model",) else "---"
                                 for k in SUMMARY_COLUMNS) + "|"]
        parts += ["| " + " | ".join(_text(r[k]) for k in SUMMARY_COLUMNS) + " |"
                  for r in rows if r["dataset"] == dataset]
        parts.append("")
    parts.append("rank: by scene-level AP (chips merged back into scenes); chip AP: on the "
                 "val chips. AP is COCO's (IoU 0.5:0.95). wall s, GPU-h and peak MB cover the "
                 "run's train and evaluate jobs; peak MB is host memory (n/a: not sampled).")
    return "\n".join(parts) + "\n"


def write_leaderboard(results: list[RunResult], csv_path: Path, markdown_path: Path,
                      html_path: Path) -> list[dict]:
    rows = leaderboard_rows(results)
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, LEADERBOARD_FIELDS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    Path(markdown_path).write_text(format_markdown(rows))
    header = "".join(f"<th>{html.escape(f)}</th>" for f in LEADERBOARD_FIELDS)
    tables = []
    for dataset in sorted({r["dataset"] for r in rows}):
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_text(r[f]))}</td>" for f in LEADERBOARD_FIELDS)
            + "</tr>" for r in rows if r["dataset"] == dataset)
        tables.append(f"<h2>{html.escape(dataset)}</h2><table><tr>{header}</tr>{body}</table>")
    html_path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>nadir leaderboard</title>"
        f"<style>{TABLE_CSS}</style></head><body><h1>Leaderboard</h1><p>COCO box metrics of "
        "each run on its dataset's val split: on the chips (AP, AP50, ...) and on whole scenes "
        "after merging the chips' detections (scene_*). rank orders a dataset's runs by "
        "scene_AP, chip_rank by chip AP. -1: no objects of that size. wall_seconds, gpu_hours "
        "and peak_memory_mb (host) cover the run's train and evaluate jobs.</p>"
        + "".join(tables) + "</body></html>\n")
    return rows
