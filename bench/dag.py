"""How long Snakemake takes to plan a real-size study: a dry run of three datasets x ten models.

The datasets are `format: sample` datasets with the scene counts of DOTA, xView and RarePlanes
(the real formats' rules are being built elsewhere; the DAG's shape per dataset is the same:
every scene is an input file of the index and chip jobs). The dry run starts in an empty
directory, so every job is planned. The baseline is the tiny test config, timed in the same
script; each figure is the median of --repeats runs of a whole `snakemake -n` process (Python
start-up and imports included).

The ten models are the first ten names of the model catalogue.

    python bench/dag.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nadir.training.catalogue import CATALOGUE  # noqa: E402

MODELS_WANTED = 10
# Scene counts (train, val) of the real datasets: DOTA v1.5 labelled train/val images; xView's
# 847 labelled images split 80/20; RarePlanes' real part as ~8,500 512-px tiles (approximate).
REAL_SIZES = {"dota_sized": (1411, 458), "xview_sized": (678, 169),
              "rareplanes_sized": (6800, 1700)}
SHARDS = 64  # chipping jobs per dataset, as a real study would use


def study_config() -> dict:
    names = sorted(CATALOGUE)[:MODELS_WANTED]
    if len(names) < MODELS_WANTED:
        raise SystemExit(f"the catalogue has {len(names)} models, the study needs "
                         f"{MODELS_WANTED}")
    return {
        "datasets": {name: {"format": "sample", "train_scenes": train, "val_scenes": val}
                     for name, (train, val) in REAL_SIZES.items()},
        "models": {name: {} for name in names},
        "chipping": {"shards": SHARDS},
    }


def dry_run(config: dict, workdir: Path) -> tuple[float, int]:
    """Seconds for `snakemake -n` in an empty directory, and the number of jobs it planned."""
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(config_path),
               "--replace-workflow-config", "-n", "--cores", "2"]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"dry run failed:\n{proc.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
    if not total:
        raise SystemExit(f"no job count in the dry run's output:\n{proc.stdout[-2000:]}")
    return seconds, int(total.group(1))


def measure(config: dict, repeats: int) -> tuple[float, int]:
    times, jobs = [], 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, jobs = dry_run(config, Path(tmp))
            times.append(seconds)
    return statistics.median(times), jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import yaml

    baseline_config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    base_s, base_jobs = measure(baseline_config, args.repeats)
    config = study_config()
    study_s, study_jobs = measure(config, args.repeats)
    scenes = sum(train + val for train, val in REAL_SIZES.values())
    print(f"baseline config/test.yaml: {base_jobs} jobs planned in {base_s:.2f} s "
          f"(median of {args.repeats})")
    print(f"study: {len(REAL_SIZES)} datasets ({scenes} scenes, {SHARDS} shards each) x "
          f"{len(config['models'])} models: {study_jobs} jobs "
          f"planned in {study_s:.2f} s (median of {args.repeats})")
    print(f"ratio study/baseline: {study_s / base_s:.2f}x time for "
          f"{study_jobs / base_jobs:.1f}x jobs; target < 10 s: "
          f"{'met' if study_s < 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
