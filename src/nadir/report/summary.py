"""The last thing a run shows in the terminal: the leaderboard and the total cost."""

from __future__ import annotations

import csv
from pathlib import Path


def summary_text(leaderboard_markdown: Path, cost_csv: Path) -> str:
    """The leaderboard and the total cost of the workflow's jobs, as the terminal shows them."""
    with open(cost_csv, newline="") as fh:
        total = list(csv.DictReader(fh))[-1]
    return (f"{Path(leaderboard_markdown).read_text()}\nCost of this workflow's jobs: "
            f"{total['jobs']} jobs, {total['wall_seconds']} s wall-clock, "
            f"{total['cpu_hours'] or 'n/a'} CPU-hours, {total['gpu_hours']} GPU-hours "
            "(per rule: results/cost.csv, and \"Cost\" in the report)\n")


def write_summary(leaderboard: str | Path, cost: str | Path, out: str | Path) -> str:
    """The summary job: the Markdown leaderboard and the total cost, written to `out` and
    printed."""
    text = summary_text(Path(leaderboard), Path(cost))
    Path(out).write_text(text)
    print(f"\n== nadir leaderboard ==\n{text}", flush=True)
    return text
