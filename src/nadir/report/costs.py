"""What each job cost, from the `benchmark:` files Snakemake writes for every rule.

A benchmark TSV holds the job's wall-clock seconds (`s`), the CPU seconds of its process tree
(`cpu_time`) and its peak resident memory in MB (`max_rss`). Snakemake samples memory and CPU
every 0.5 s for the first 30 s of a job, then every 30 s, so a job that ends before its first
sample has "NA" there: those are reported as not measured (None), never as 0, and peak memory
is a sampled lower bound.

GPU-hours are the wall-clock hours of the jobs that ran on a GPU, times the GPUs they used. The
job records its device itself (run.json for training, predictions_record.json for the evaluate
job's detections): a job that asked for a GPU and fell back to the CPU is not billed GPU time.
Both backends train and predict on one device, so a job on a GPU counts one.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nadir.core.errors import InputError
from nadir.core.html import heading, page, paragraph, table
from nadir.core.named_inputs import files_by_owner, input_name

log = logging.getLogger(__name__)

COST_FIELDS = ["rule", "jobs", "wall_seconds", "cpu_hours", "gpu_hours", "peak_memory_mb",
               "unmeasured_jobs"]


@dataclass(frozen=True)
class JobCost:
    rule: str
    wall_seconds: float
    cpu_seconds: float | None
    peak_memory_mb: float | None
    gpus: int = 0

    @property
    def gpu_hours(self) -> float:
        return self.wall_seconds * self.gpus / 3600


def _number(value: str, path: Path, column: str) -> float | None:
    if value in ("NA", "-", ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise InputError(path, f"column {column!r}: expected a number or NA, got {value!r}",
                         line=2) from None


def read_benchmark(path: Path, rule: str, gpus: int = 0) -> JobCost:
    """One job's cost from its Snakemake benchmark TSV (one header line, one record)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if len(rows) != 1 or "s" not in rows[0] or "max_rss" not in rows[0]:
        raise InputError(path, f"expected a Snakemake benchmark file: a header with 's', "
                         f"'max_rss' and 'cpu_time' and exactly one record; got {len(rows)} "
                         "record(s) (benchmark repeats are not supported)")
    row = rows[0]
    wall = _number(row["s"], path, "s")
    if wall is None:
        raise InputError(path, "the wall-clock time 's' is missing", line=2)
    return JobCost(rule, wall, _number(row.get("cpu_time", "NA"), path, "cpu_time"),
                   _number(row["max_rss"], path, "max_rss"), gpus)


def recorded_gpus(record: dict, source: str | Path) -> int:
    """GPUs a job used, from the device it recorded: `device` (predictions_record.json) or
    `training.device` (run.json), such as 'cpu', 'cuda' or 'cuda:0', times the training
    processes (one per GPU under DDP) where the record has them."""
    training = record.get("training", {})
    device = record.get("device") or training.get("device")
    if device is None:
        raise InputError(source, "no 'device' or 'training.device': cannot tell whether the "
                         "job ran on a GPU")
    if not str(device).startswith("cuda"):
        return 0
    return int(training.get("processes") or 1)


# The kinds of a job's inputs (nadir.core.named_inputs): its benchmark TSV and, for a job that may
# use a GPU, the JSON that records its device. Their owner is `RULE/JOB`.
BENCHMARK_KIND, DEVICE_KIND = "benchmark", "device"


def cost_inputs(jobs: Iterable[tuple[str, str, str, str | None]]) -> dict[str, str]:
    """The cost rule's named inputs from (rule, job, benchmark TSV, device record or None) per
    job; `job` tells a rule's jobs apart (its wildcards, such as `sample/000`)."""
    named = {}
    for rule, job, benchmark, record in jobs:
        owner = f"{rule}/{job}"
        named[input_name(BENCHMARK_KIND, owner)] = benchmark
        if record is not None:
            named[input_name(DEVICE_KIND, owner)] = record
    return named


def job_costs(named: Mapping[str, str | Path]) -> list[JobCost]:
    """Every job's cost from the inputs `cost_inputs` named, in their order, but the jobs that
    may use a GPU (with a device record) last: the table lists those rules together."""
    jobs = []
    by_job = files_by_owner(named.items(), [BENCHMARK_KIND], [DEVICE_KIND]).items()
    for owner, files in sorted(by_job, key=lambda job: DEVICE_KIND in job[1]):
        record = files.get(DEVICE_KIND)
        gpus = 0 if record is None else recorded_gpus(json.loads(record.read_text()), record)
        jobs.append(read_benchmark(files[BENCHMARK_KIND], owner.partition("/")[0], gpus))
    return jobs


def _max(values: list[float | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return max(measured) if measured else None


def cost_table(jobs: list[JobCost]) -> list[dict]:
    """One row per rule (in first-seen order) and a final 'total' row."""
    by_rule: dict[str, list[JobCost]] = {}
    for job in jobs:
        by_rule.setdefault(job.rule, []).append(job)
    groups = [*by_rule.items(), ("total", jobs)]
    rows = []
    for rule, group in groups:
        cpu = [j.cpu_seconds for j in group if j.cpu_seconds is not None]
        rows.append({
            "rule": rule, "jobs": len(group),
            "wall_seconds": round(sum(j.wall_seconds for j in group), 2),
            "cpu_hours": round(sum(cpu) / 3600, 5) if cpu else None,
            "gpu_hours": round(sum(j.gpu_hours for j in group), 5),
            "peak_memory_mb": _max([j.peak_memory_mb for j in group]),
            "unmeasured_jobs": sum(1 for j in group if j.cpu_seconds is None),
        })
    return rows


def _cell(value) -> str:
    return "not measured" if value is None else str(value)


def write_cost_table(rows: list[dict], csv_path: Path, html_path: Path) -> None:
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, COST_FIELDS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    html_path.write_text(page(
        "nadir cost per rule", heading(1, "Cost per rule"),
        paragraph("From Snakemake's benchmark files: wall-clock seconds summed over a rule's "
                  "jobs, CPU-hours of their process trees, GPU-hours of the jobs that ran on a "
                  "GPU, and the largest sampled resident memory. 'unmeasured_jobs' ended before "
                  "Snakemake's first resource sample (0.5 s)."),
        table(COST_FIELDS, ([_cell(r[f]) for f in COST_FIELDS] for r in rows))))


def cost_of_files(named: Mapping[str, str | Path], csv_path: str | Path,
                  html_path: str | Path) -> list[dict]:
    """The cost table of the jobs whose files `named` holds (such as `snakemake.input`)."""
    rows = cost_table(job_costs(named))
    write_cost_table(rows, Path(csv_path), Path(html_path))
    total = rows[-1]
    log.info("cost of %d job(s): %.1f s wall, %s CPU-hours, %.4f GPU-hours", total["jobs"],
             total["wall_seconds"], total["cpu_hours"], total["gpu_hours"])
    return rows
