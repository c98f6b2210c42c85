"""The summarise stage: the leaderboard across runs (repeats aggregated).

Every figure is in nadir.report.figures, the cost table in nadir.report.costs.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from nadir.compare import group_settings, summarise_repeats
from nadir.core.html import Span, heading, page, paragraph, table
from nadir.core.named_inputs import files_by_owner, files_by_run
from nadir.report.costs import JobCost, read_benchmark, recorded_gpus

log = logging.getLogger(__name__)

LEADERBOARD_METRICS = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"]
SCENE_METRICS = ["AP", "AP50", "AP75", "ARmax"]
ALL_METRICS = [*LEADERBOARD_METRICS, *(f"scene_{m}" for m in SCENE_METRICS)]
# Over repeats each metric column holds the mean; these say how far to trust it.
SPREAD_SUFFIXES = ["sd", "ci_low", "ci_high"]
# The benchmark protocols' headline numbers (scene level; empty where not computed).
PROTOCOL_COLUMNS = {"dota_task2_map": "dota_task2", "dota_task1_map": "dota_task1",
                    "xview_map": "xview"}
LEADERBOARD_FIELDS = [
    "rank", "chip_rank", "dataset", "model", "run", "bands", "repeats", "seeds", *ALL_METRICS,
    *PROTOCOL_COLUMNS, "recipe", "pretrained", "iterations", "train_seconds", "wall_seconds",
    "gpu_hours",
    "peak_memory_mb", "device",
    "train_chips", "val_chips", "val_scenes", "weights", "vs_best", "vs_best_difference",
    "vs_best_ci_low", "vs_best_ci_high",
    *(f"{m}_{suffix}" for m in ALL_METRICS for suffix in SPREAD_SUFFIXES),
]
# The columns of the terminal and Markdown tables, with their headings.
SUMMARY_COLUMNS = {"rank": "rank", "run": "model", "bands": "bands", "scene_AP": "scene AP",
                   "scene_AP50": "scene AP50", "dota_task2_map": "DOTA task 2 mAP",
                   "dota_task1_map": "DOTA task 1 mAP", "xview_map": "xView mAP",
                   "AP": "chip AP", "AP50": "chip AP50", "recipe": "recipe",
                   "pretrained": "pretrained", "iterations": "iterations",
                   "wall_seconds": "wall s", "gpu_hours": "GPU-h", "peak_memory_mb": "peak MB"}


@dataclass
class RunResult:
    """Everything known about one training run: its record, scores and job costs. `name` is
    the run's folder (the model, plus its sweep cell and repeat); empty: the model's name."""

    run: dict
    chip: dict
    scene: dict
    jobs: list[JobCost]
    name: str = ""


@dataclass(frozen=True)
class RunFiles:
    """The files a run's leaderboard row is read from; each field is the kind of the input
    that names it (nadir.core.named_inputs), e.g. `train_benchmark:DATASET/RUN`."""

    run: Path  # run.json
    metrics: Path  # chip-level metrics.json
    scene_metrics: Path  # scene_metrics.json
    train_benchmark: Path  # the benchmark TSVs of its train, evaluate, evaluate_scenes jobs
    evaluate_benchmark: Path
    scene_benchmark: Path


RUN_FILE_KINDS = [field.name for field in fields(RunFiles)]
COMPARISON_KIND = "comparison"  # comparison.json, named `comparison:DATASET`


def read_run_result(files: RunFiles, name: str) -> RunResult:
    """A run's record, chip and scene scores and job costs (GPUs from the devices recorded);
    `name` is the run's name (its folder)."""
    run = json.loads(files.run.read_text())
    chip = json.loads(files.metrics.read_text())
    jobs = [read_benchmark(files.train_benchmark, "train", recorded_gpus(run, files.run)),
            read_benchmark(files.evaluate_benchmark, "evaluate",
                           recorded_gpus(chip, files.metrics)),
            read_benchmark(files.scene_benchmark, "evaluate_scenes")]
    return RunResult(run, chip, json.loads(files.scene_metrics.read_text()), jobs, name=name)


def _rank(rows: list[dict], metric: str, column: str) -> None:
    """Number rows 1..n within each dataset by `metric`, best first (ties: chip AP, run)."""
    for dataset in {r["dataset"] for r in rows}:
        ranked = sorted((r for r in rows if r["dataset"] == dataset),
                        key=lambda r: (-r[metric], -r["AP"], r["run"]))
        for i, row in enumerate(ranked, start=1):
            row[column] = i


def protocol_map(scene: dict, protocol: str) -> float | None:
    """A protocol's mAP from scene metrics; None where it was not asked for or not computed."""
    result = scene.get("protocols", {}).get(protocol, {})
    return result.get("map") if result.get("status") == "ok" else None


def group_repeats(results: list[RunResult]) -> list[tuple[str, list[RunResult]]]:
    """(setting's label, its runs): runs that differ only by their seed are one row."""
    groups = group_settings([(r.name or r.run["model"], r.run) for r in results])
    return [(label, [results[i] for i in members]) for label, members in groups]


def _metric_values(result: RunResult) -> dict:
    return {**{m: result.chip["metrics"][m] for m in LEADERBOARD_METRICS},
            **{f"scene_{m}": result.scene["metrics"][m] for m in SCENE_METRICS}}


def _vs_best(comparison: dict | None, label: str) -> dict:
    """The comparison's verdict on a setting, and the best's lead over it with its interval."""
    empty = {"vs_best": None, "vs_best_difference": None, "vs_best_ci_low": None,
             "vs_best_ci_high": None}
    if comparison is None or label not in comparison["verdicts"]:
        return empty
    best = comparison["best"]
    row = {**empty, "vs_best": comparison["verdicts"][label]}
    for pair in comparison["pairs"]:
        if {pair["first"], pair["second"]} == {label, best}:
            sign = 1 if pair["first"] == best else -1  # always best minus this one
            low, high = sorted((sign * pair["ci_low"], sign * pair["ci_high"]))
            row |= {"vs_best_difference": round(sign * pair["difference"], 6),
                    "vs_best_ci_low": round(low, 6), "vs_best_ci_high": round(high, 6)}
    return row


def _mean_or_none(values: list) -> float | None:
    """The mean over repeats of a number some runs may lack (None then)."""
    return None if any(v is None for v in values) else round(sum(values) / len(values), 6)


def _weights(members: list[RunResult]) -> str:
    """Which weights were scored: the last, or the best on the selection split (iterations)."""
    selection = members[0].run["training"].get("selection")
    if not selection or selection["weights"] == "last":
        return "last" if not selection else "last (selection split scored)"
    iterations = ", ".join(str(r.run["training"]["selection"]["best"]["iteration"])
                           for r in members)
    return f"best on the selection split (iteration {iterations})"


def bands_label(bands: dict | None) -> str:
    """The bands a run's model took, as run.json records them: `RGB` for the default (bands
    1-3, or grey), else the chips' band names or indices, and `mixed` for a band-mixing stem."""
    if not bands or not bands.get("bands") or len(bands["bands"]) == 1:
        return "RGB"
    label = " ".join(str(b) for b in bands["bands"])
    return label + (" (mixed)" if bands.get("band_mixing") else "")


def _training_of(run: dict) -> dict:
    """How a run was trained: its recipe (runs recorded before recipes existed trained with
    the common one) and the weights it started from."""
    hp = run.get("hyperparameters", {})
    return {"recipe": hp.get("recipe") or "common", "pretrained": hp.get("pretrained")}


def leaderboard_rows(results: list[RunResult],
                     comparisons: dict[str, dict] | None = None) -> list[dict]:
    """One row per dataset and setting (a model or a sweep cell), its repeats aggregated: each
    metric is the mean, with sd and 95 % t-interval beside it. `rank` orders each dataset's
    rows by scene-level AP, `chip_rank` by chip-level AP, so a model that wins on chips but
    not on whole scenes shows it. `comparisons` (per dataset, from nadir.compare.bootstrap) add the
    paired-bootstrap verdict against the dataset's best setting."""
    rows = []
    for label, members in group_repeats(results):
        first = members[0]
        memory = [j.peak_memory_mb for r in members for j in r.jobs if j.peak_memory_mb is not None]
        values = [_metric_values(r) for r in members]
        row = {"dataset": first.run["dataset"], "model": first.run["model"], "run": label,
               "bands": bands_label(first.run.get("bands")), "repeats": len(members),
               "seeds": " ".join(str(r.run.get("hyperparameters", {}).get("seed", ""))
                                 for r in members).strip()}
        for metric in ALL_METRICS:
            stats = summarise_repeats([v[metric] for v in values])
            row[metric] = round(stats["mean"], 6)
            for suffix in SPREAD_SUFFIXES:
                row[f"{metric}_{suffix}"] = (None if stats[suffix] is None
                                             else round(stats[suffix], 6))
        row |= {
            **{column: _mean_or_none([protocol_map(r.scene, p) for r in members])
               for column, p in PROTOCOL_COLUMNS.items()},
            **_training_of(first.run),
            "iterations": first.run["training"]["iterations"],
            "train_seconds": round(sum(r.run["training"]["seconds"] for r in members)
                                   / len(members), 2),
            "wall_seconds": round(sum(j.wall_seconds for r in members for j in r.jobs), 2),
            "gpu_hours": round(sum(j.gpu_hours for r in members for j in r.jobs), 5),
            "peak_memory_mb": max(memory) if memory else None,
            "device": first.run["training"]["device"],
            "train_chips": first.run["training"]["chips"], "val_chips": first.chip["images"],
            "val_scenes": first.scene["images"], "weights": _weights(members),
            **_vs_best((comparisons or {}).get(first.run["dataset"]), label),
        }
        rows.append(row)
    _rank(rows, "scene_AP", "rank")
    _rank(rows, "AP", "chip_rank")
    rows.sort(key=lambda r: (r["dataset"], r["rank"]))
    return rows


def _text(value) -> str:
    return "n/a" if value is None else str(value)


def _cell(row: dict, key: str) -> str:
    """A table cell: a metric with repeats as `mean ± sd`, anything else as it is."""
    if row.get(f"{key}_sd") is not None:
        return f"{row[key]:.4f} ± {row[f'{key}_sd']:.4f}"
    return _text(row[key])


def _summary_columns(rows: list[dict]) -> dict:
    """SUMMARY_COLUMNS, plus the comparison's verdict where there is one."""
    if any(r.get("vs_best") for r in rows):
        return {**SUMMARY_COLUMNS, "vs_best": "vs best"}
    return SUMMARY_COLUMNS


def format_markdown(rows: list[dict]) -> str:
    """The leaderboard as Markdown, one table per dataset (also what the terminal shows)."""
    parts = []
    for dataset in sorted({r["dataset"] for r in rows}):
        runs = [r for r in rows if r["dataset"] == dataset]
        # A protocol column only for datasets scored by that protocol; bands only where a
        # run took other bands than RGB.
        columns = {k: v for k, v in _summary_columns(rows).items()
                   if (k not in PROTOCOL_COLUMNS or any(r[k] is not None for r in runs))
                   and (k != "bands" or any(r[k] != "RGB" for r in rows))}
        parts += [f"### {dataset}", "",
                  "| " + " | ".join(columns.values()) + " |",
                  "|" + "|".join("---:" if k not in ("run", "vs_best") else "---"
                                 for k in columns) + "|"]
        parts += ["| " + " | ".join(_cell(r, k) for k in columns) + " |" for r in runs]
        parts.append("")
    parts.append("rank: by scene-level AP (chips merged back into scenes); chip AP: on the "
                 "val chips. AP is COCO's (IoU 0.5:0.95). DOTA task 1/2 and xView mAP: the "
                 "benchmarks' own protocols on the same scenes (docs/evaluation.md). wall s, "
                 "GPU-h and peak MB cover the run's train and evaluate jobs; peak MB is host "
                 "memory (n/a: not sampled).")
    if any(r["repeats"] > 1 for r in rows):
        parts.append("mean ± sd: over the repeats (seeds) of a setting; wall s and GPU-h are "
                     "their sum. 95 % intervals: results/leaderboard.csv.")
    if any(r.get("vs_best") for r in rows):
        parts.append("vs best: paired bootstrap over the val scenes of the difference in scene "
                     "AP to the dataset's best (results/<dataset>/comparison.html).")
    return "\n".join(parts) + "\n"


def _html_cell(row: dict, key: str) -> str:
    if key in ALL_METRICS and row.get(f"{key}_sd") is not None:
        return (f"{row[key]:.4f} ± {row[f'{key}_sd']:.4f} "
                f"[{row[f'{key}_ci_low']:.4f}, {row[f'{key}_ci_high']:.4f}]")
    if key == "vs_best_difference" and row[key] is not None:
        return f"{row[key]:.4f} [{row['vs_best_ci_low']:.4f}, {row['vs_best_ci_high']:.4f}]"
    return _text(row[key])


# The HTML table folds each metric's spread into its cell (mean ± sd [95 % interval]).
HTML_FIELDS = [f for f in LEADERBOARD_FIELDS if not f.endswith(
    tuple(f"_{suffix}" for suffix in SPREAD_SUFFIXES)) or f == "vs_best_difference"]


# Summary numbers of a protocol's table, before its per-class AP (those a protocol has).
PROTOCOL_SUMMARY = ["map", "map_small", "map_medium", "map_large", "map_common", "map_rare",
                    "precision", "recall", "f1"]


def protocol_tables(results: list[RunResult], dataset: str) -> str:
    """HTML: per benchmark protocol that scored this dataset, one row per model with its
    summary numbers and per-class AP (a protocol not computed for a model says why)."""
    runs = sorted((r for r in results if r.run["dataset"] == dataset),
                  key=lambda r: r.run["model"])
    tables = []
    for protocol in PROTOCOL_COLUMNS.values():
        scored = [r.scene.get("protocols", {}).get(protocol) for r in runs]
        ok = [p for p in scored if p and p["status"] == "ok"]
        if not ok:
            continue
        summary = [k for k in PROTOCOL_SUMMARY if k in ok[0]]
        classes = [c["name"] for c in ok[0]["per_class"]]
        rows = []
        for run, result in zip(runs, scored, strict=True):
            if result is None:
                continue
            if result["status"] != "ok":
                cells = [Span(f"{result['status']}: {result['reason']}",
                              len(summary) + len(classes))]
            else:
                ap = {c["name"]: c["AP"] for c in result["per_class"]}
                cells = [_text(v) for v in
                         [*(result[k] for k in summary), *(ap.get(c) for c in classes)]]
            rows.append([run.run["model"], *cells])
        tables.append(heading(3, protocol) + table(["model", *summary, *classes], rows))
    return "".join(tables)


def write_leaderboard(results: list[RunResult], csv_path: Path, markdown_path: Path,
                      html_path: Path, comparisons: dict[str, dict] | None = None) -> list[dict]:
    rows = leaderboard_rows(results, comparisons)
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, LEADERBOARD_FIELDS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    Path(markdown_path).write_text(format_markdown(rows))
    tables = [heading(2, dataset)
              + table(HTML_FIELDS, ([_html_cell(r, f) for f in HTML_FIELDS]
                                    for r in rows if r["dataset"] == dataset))
              + protocol_tables(results, dataset)
              for dataset in sorted({r["dataset"] for r in rows})]
    html_path.write_text(page(
        "nadir leaderboard", heading(1, "Leaderboard"), paragraph(
            "COCO box metrics of each run on its dataset's val split: on the chips (AP, AP50, "
            "...) and on whole scenes after merging the chips' detections (scene_*), and the "
            "benchmarks' own protocols on the same scenes: dota_task2_map and dota_task1_map "
            "(DOTA_devkit, VOC07 AP at IoU 0.5, horizontal and oriented boxes), xview_map (the "
            "xView scorer); empty where a protocol was not asked for or not computed; below "
            "each dataset's table, each protocol's numbers per model, with its per-class AP. "
            "rank orders a dataset's runs by scene_AP, chip_rank by chip AP. -1: no objects of "
            "that size. wall_seconds, gpu_hours and peak_memory_mb (host) cover the run's "
            "train and evaluate jobs. A setting trained with several seeds (repeats) shows each "
            "metric as mean ± sd [95 % t-interval of the mean], its costs summed. vs_best: the "
            "paired bootstrap's verdict against the dataset's best setting, and the best's lead "
            "in scene AP with its 95 % interval."), *tables))
    return rows


def leaderboard_of_files(named: Mapping[str, str | Path], csv_path: str | Path,
                         markdown_path: str | Path, html_path: str | Path) -> list[dict]:
    """The leaderboard of the runs whose files `named` holds (such as `snakemake.input`): the
    files of RUN_FILE_KINDS per run, named by nadir.core.named_inputs.run_inputs, and each
    dataset's `comparison:DATASET`. Rows keep the order in which the runs are named."""
    results = [read_run_result(RunFiles(**files), run)
               for (_, run), files in files_by_run(named.items(), RUN_FILE_KINDS).items()]
    comparisons = {dataset: json.loads(files[COMPARISON_KIND].read_text())
                   for dataset, files in files_by_owner(named.items(), [COMPARISON_KIND]).items()}
    rows = write_leaderboard(results, Path(csv_path), Path(markdown_path), Path(html_path),
                             comparisons)
    log.info("ranked %d run(s) on %d dataset(s)", len(rows), len({r["dataset"] for r in rows}))
    return rows
