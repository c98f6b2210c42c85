"""Shared fixtures: the repository's source on sys.path, a real S3 server, Snakemake runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import s3server  # noqa: E402

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# The jobs of one (dataset, model) run, and the summary jobs that gather every run: what an
# edit of one model's settings reruns.
RUN_JOBS = ["train", "evaluate", "evaluate_scenes", "loss_curve", "plot_pr", "plot_detections"]
SUMMARY_JOBS = ["plot_class_ap", "compare", "leaderboard", "cost", "summary", "all"]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """One SeaweedFS server for the whole test session (ready in about a second)."""
    server = s3server.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


def run_snakemake(workdir: Path, *args: str, env: dict | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's workflow in `workdir` (its own results, logs and metadata)."""
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(args)}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a run or dry run as {rule: count}.

    An empty dict is returned only when Snakemake said there was nothing to be done, so a test
    asserting `== {}` cannot pass on output that merely lacks the table.
    """
    output = proc.stdout + proc.stderr
    if "Nothing to be done" in output:
        return {}
    jobs, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
            if line.startswith("---"):
                continue
            if not match:
                break
            if match.group(1) != "total":
                jobs[match.group(1)] = int(match.group(2))
    if not jobs:
        raise AssertionError(f"no job table and no 'Nothing to be done' in:\n{output[-3000:]}")
    return jobs
