"""Benchmark: the sample pipeline (`make sample` without the install), stage by stage.

Runs the workflow with the default config in a fresh working directory (`snakemake --cores 2`,
as `make sample` does), then reads the benchmark file Snakemake wrote for every job and prints,
per rule: jobs, wall seconds (summed over its jobs), CPU seconds, peak RSS and the share of its
wall time it was on a CPU (Snakemake's `mean_load`, in %); and
the run's whole wall time, the time of the report, Python's start-up plus nadir's imports (what
every job pays once), and the AP50 on the val chips and scenes from the leaderboard. Every
figure comes with the load average, since other work on the machine slows whichever job it
overlaps. Rules run two at a time on 2 cores, so per-rule seconds add up to more than the wall
time.

With `--baseline REF` it first runs the same measurement on the code and config of a git
commit (exported with `git archive` to a temporary folder; its `src/` goes first on PYTHONPATH,
so its own nadir runs), then the working tree's, and prints the ratios of their times and both
AP50s: a change's speed-up measured in one script, on one machine, under one load.

    python bench/sample_pipeline.py                       # runs the pipeline
    python bench/sample_pipeline.py --baseline 9630e01     # that commit, then the working tree
    python bench/sample_pipeline.py --workdir DIR --no-run  # only reads DIR's benchmark files
    python bench/sample_pipeline.py --set training.iterations=600   # a config override
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - started


def start_up_seconds(repeats: int = 3) -> dict[str, float]:
    """What every job pays before it works: the interpreter, the frame of a rule's script
    (Snakemake's preamble and nadir's job frame), and torch for the jobs that need it."""
    script_frame = ("from snakemake.logging import logger; "
                    "from snakemake.iocontainers import Snakemake; import nadir.core.jobs")
    probes = {"python -c pass": [sys.executable, "-c", "pass"],
              "a rule's script frame": [sys.executable, "-c", script_frame],
              "import torch, torchvision": [sys.executable, "-c", "import torch, torchvision"]}
    return {name: min(timed(cmd, ROOT) for _ in range(repeats)) for name, cmd in probes.items()}


def per_rule(workdir: Path) -> dict[str, dict]:
    """Sum Snakemake's benchmark files (results/benchmarks/**.tsv) per rule."""
    rules: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "s": 0.0, "cpu_time": 0.0,
                                                   "max_rss": 0.0, "cpu_percent": []})
    for path in sorted((workdir / "results" / "benchmarks").rglob("*.tsv")):
        rule = path.stem.split("-")[0]
        with open(path) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        entry = rules[rule]
        entry["jobs"] += 1
        entry["s"] += float(row["s"])
        entry["cpu_time"] += float(row.get("cpu_time") or 0)
        rss = row.get("max_rss")
        entry["max_rss"] = max(entry["max_rss"], float(rss) if rss not in (None, "", "NA") else 0)
        if row.get("mean_load") not in (None, "", "NA"):
            entry["cpu_percent"].append(float(row["mean_load"]))
    return dict(rules)


def leaderboard(workdir: Path) -> list[dict]:
    path = workdir / "results" / "leaderboard.csv"
    return list(csv.DictReader(open(path))) if path.exists() else []


def export(ref: str, into: Path) -> Path:
    """The tree of git commit `ref` of this repository, unpacked under `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_pipeline(source: Path, workdir: Path, cores: int, overrides: list[str]) -> dict:
    """`snakemake --cores N` (the pipeline) and `snakemake --report` of the source tree
    `source` in the fresh `workdir`, with `source`'s config and nadir; their wall seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "config", workdir / "config", dirs_exist_ok=True)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        [str(source / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    snakemake = [str(BIN / "snakemake"), "--snakefile", str(source / "Snakefile"),
                 "--directory", str(workdir), "--cores", str(cores)]
    config = ["--config", *overrides] if overrides else []
    load = os.getloadavg()[0]
    pipeline = timed(snakemake + config, source, env)
    report = timed(snakemake + config + ["--report", str(workdir / "report.html")], source, env)
    print(f"{source}: pipeline {pipeline:.1f} s (load {load:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after), report {report:.1f} s, together "
          f"{(pipeline + report) / 60:.2f} min", flush=True)
    return {"pipeline": pipeline, "report": report}


def print_rules(workdir: Path) -> None:
    rules = per_rule(workdir)
    print(f"\n{workdir}\n{'rule':<20}{'jobs':>5}{'wall s':>9}{'CPU s':>9}{'peak MiB':>10}"
          f"{'CPU %':>7}")
    for rule, r in sorted(rules.items(), key=lambda item: -item[1]["s"]):
        busy = (f"{sum(r['cpu_percent']) / len(r['cpu_percent']):7.1f}" if r["cpu_percent"]
                else f"{'-':>7}")
        print(f"{rule:<20}{r['jobs']:>5}{r['s']:9.1f}{r['cpu_time']:9.1f}{r['max_rss']:10.0f}"
              f"{busy}")
    print(f"{'all jobs':<20}{sum(r['jobs'] for r in rules.values()):>5}"
          f"{sum(r['s'] for r in rules.values()):9.1f}"
          f"{sum(r['cpu_time'] for r in rules.values()):9.1f}")
    for row in leaderboard(workdir):
        print("leaderboard: " + json.dumps(row))


def scene_ap50(workdir: Path) -> str:
    return ", ".join(f"{row['model']} {float(row['scene_AP50']):.3f}"
                     for row in leaderboard(workdir)) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--no-run", action="store_true", help="only read --workdir's files")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run git commit REF's code and config first, for ratios")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, passed to snakemake --config")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nadir-bench-sample-"))
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; workdir {workdir}")
    start_up = start_up_seconds()
    print("start-up (best of 3): " + ", ".join(f"{k} {v:.2f} s" for k, v in start_up.items())
          + f"; load {os.getloadavg()[0]:.2f}")
    if args.no_run:
        print_rules(workdir)
        return
    runs = {}
    if args.baseline:
        baseline_source = export(args.baseline, workdir / f"source-{args.baseline}")
        runs["baseline"] = (workdir / "baseline", run_pipeline(
            baseline_source, workdir / "baseline", args.cores, args.set))
    runs["current"] = (workdir / "current", run_pipeline(ROOT, workdir / "current", args.cores,
                                                          args.set))
    for folder, _ in runs.values():
        print_rules(folder)
    if args.baseline:
        (_, before), (_, after) = runs["baseline"], runs["current"]
        total = {name: t["pipeline"] + t["report"] for name, t in (("b", before), ("a", after))}
        print(f"\n{args.baseline} -> working tree: pipeline {before['pipeline']:.1f} -> "
              f"{after['pipeline']:.1f} s ({after['pipeline'] / before['pipeline']:.2f} x), "
              f"with the report {total['b'] / 60:.2f} -> {total['a'] / 60:.2f} min "
              f"({total['a'] / total['b']:.2f} x); scene AP50 "
              f"{scene_ap50(runs['baseline'][0])} -> {scene_ap50(runs['current'][0])}")


if __name__ == "__main__":
    main()
