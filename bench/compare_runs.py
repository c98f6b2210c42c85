"""Are two runs of the sample pipeline the same, byte for byte, where the code promises it?

A change of structure (modules moved, rules calling code another way) must not change what the
pipeline makes. Run the sample pipeline at each commit into its own folder, then:

    PYTHONPATH=src snakemake --directory RUN --cores 2 \
        --configfile config/test.yaml --replace-workflow-config     # at each commit
    python bench/compare_runs.py RUN_BEFORE RUN_AFTER

It compares the products that depend only on the config and the code's arithmetic: the chips
(shard tars and chip lists, the chip manifest), the COCO files, and each run's chip and scene
metrics and predictions. Files that record timings, versions or the source's digest (run.json,
train_log.json, benchmarks, the leaderboard and cost tables) differ between any two runs and are
left out. Prints one line per file; the exit status is 1 when any file differs or is missing.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
from pathlib import Path

COMPARED = [
    "results/*/chips/shard-*.tar",
    "results/*/chips/shard-*.json",
    "results/*/chips/manifest.json",
    "results/*/coco/*.json",
    "results/*/models/*/metrics.json",
    "results/*/models/*/scene_metrics.json",
    "results/*/models/*/predictions.json",
    "results/*/models/*/scene_predictions.json",
]


def compared_files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for pattern in COMPARED for p in run.glob(pattern)}


def compare(before: Path, after: Path) -> list[tuple[str, str]]:
    """(file, verdict) for every compared file of either run: same, DIFFERENT or MISSING."""
    verdicts = []
    for name in sorted(compared_files(before) | compared_files(after)):
        a, b = before / name, after / name
        if not (a.is_file() and b.is_file()):
            verdicts.append((name, f"MISSING in {before if not a.is_file() else after}"))
        else:
            verdicts.append((name, "same" if filecmp.cmp(a, b, shallow=False) else "DIFFERENT"))
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="working directory of the first run")
    parser.add_argument("after", type=Path, help="working directory of the second run")
    args = parser.parse_args()
    verdicts = compare(args.before, args.after)
    for name, verdict in verdicts:
        print(f"{verdict:10} {name}")
    bad = [name for name, verdict in verdicts if verdict != "same"]
    print(f"{len(verdicts) - len(bad)} of {len(verdicts)} files byte-identical")
    return 1 if bad or not verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
