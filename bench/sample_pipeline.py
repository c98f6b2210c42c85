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

    python bench/sample_pipeline.py                       # runs the pipeline (about 5 minutes)
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


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - started


def start_up_seconds(repeats: int = 3) -> dict[str, float]:
    """What every job pays before it works: the interpreter, and nadir's CLI with torch."""
    probes = {"python -c pass": [sys.executable, "-c", "pass"],
              "python -m nadir --help": [sys.executable, "-m", "nadir", "--help"],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--no-run", action="store_true", help="only read --workdir's files")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, passed to snakemake --config")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nadir-bench-sample-"))
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; workdir {workdir}")
    start_up = start_up_seconds()
    print("start-up (best of 3): " + ", ".join(f"{k} {v:.2f} s" for k, v in start_up.items())
          + f"; load {os.getloadavg()[0]:.2f}")
    if not args.no_run:
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ROOT / "config", workdir / "config", dirs_exist_ok=True)
        snakemake = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
                     "--directory", str(workdir), "--cores", str(args.cores)]
        config = ["--config", *args.set] if args.set else []
        load = os.getloadavg()[0]
        pipeline = timed(snakemake + config, ROOT)
        report = timed(snakemake + config + ["--report", str(workdir / "report.html")], ROOT)
        print(f"pipeline {pipeline:.1f} s (load {load:.2f} before, {os.getloadavg()[0]:.2f} "
              f"after), report {report:.1f} s, together {(pipeline + report) / 60:.2f} min")
    rules = per_rule(workdir)
    print(f"\n{'rule':<20}{'jobs':>5}{'wall s':>9}{'CPU s':>9}{'peak MiB':>10}{'CPU %':>7}")
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


if __name__ == "__main__":
    main()
