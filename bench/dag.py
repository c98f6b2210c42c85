"""How long Snakemake takes to plan a real-size study: a dry run of three datasets x ten models.

The datasets are `format: sample` datasets with the scene counts of DOTA, xView and RarePlanes
(the real formats' rules are being built elsewhere; the DAG's shape per dataset is the same:
every scene is an input file of the index and chip jobs). The dry run starts in an empty
directory, so every job is planned. The baseline is the tiny test config, timed in the same
script; each figure is the median of --repeats runs of a whole `snakemake -n` process (Python
start-up and imports included).

The model catalogue may hold fewer than ten names; the benchmark then adds stand-in names
(aliases of an existing entry) inside the benchmarked process only, since planning depends on
the names alone. It says how many it added.

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


def study_config() -> tuple[dict, list[str]]:
    names = sorted(CATALOGUE)[:MODELS_WANTED]
    stand_ins = [f"stand_in_{i}" for i in range(MODELS_WANTED - len(names))]
    config = {
        "datasets": {name: {"format": "sample", "train_scenes": train, "val_scenes": val}
                     for name, (train, val) in REAL_SIZES.items()},
        "models": {name: {} for name in names + stand_ins},
        "chipping": {"shards": SHARDS},
    }
    return config, stand_ins


def dry_run(config: dict, stand_ins: list[str], workdir: Path) -> tuple[float, int, str]:
    """Seconds for `snakemake -n` in an empty directory, and the number of jobs it planned."""
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config))
    program = "\n".join([
        "import sys",
        f"sys.path.insert(0, {str(ROOT / 'src')!r})",
        "from nadir.training import catalogue",
        f"for name in {stand_ins!r}:",
        "    catalogue.CATALOGUE[name] = next(iter(catalogue.CATALOGUE.values()))",
        "from snakemake.cli import main",
        f"sys.argv = ['snakemake', '--snakefile', {str(ROOT / 'Snakefile')!r}, '--directory',"
        f" {str(workdir)!r}, '--configfile', {str(config_path)!r}, '--replace-workflow-config',"
        " '-n', '--quiet', 'rules', '--cores', '2']",
        "main()",
    ])
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"dry run failed:\n{proc.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
    if not total:
        raise SystemExit(f"no job count in the dry run's output:\n{proc.stdout[-2000:]}")
    return seconds, int(total.group(1)), proc.stdout + proc.stderr


def measure(config: dict, stand_ins: list[str], repeats: int) -> tuple[float, int]:
    times, jobs = [], 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, jobs, _ = dry_run(config, stand_ins, Path(tmp))
            times.append(seconds)
    return statistics.median(times), jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import yaml

    baseline_config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    base_s, base_jobs = measure(baseline_config, [], args.repeats)
    config, stand_ins = study_config()
    study_s, study_jobs = measure(config, stand_ins, args.repeats)
    scenes = sum(train + val for train, val in REAL_SIZES.values())
    print(f"baseline config/test.yaml: {base_jobs} jobs planned in {base_s:.2f} s "
          f"(median of {args.repeats})")
    print(f"study: {len(REAL_SIZES)} datasets ({scenes} scenes, {SHARDS} shards each) x "
          f"{len(config['models'])} models ({len(stand_ins)} stand-in names): {study_jobs} jobs "
          f"planned in {study_s:.2f} s (median of {args.repeats})")
    print(f"ratio study/baseline: {study_s / base_s:.2f}x time for "
          f"{study_jobs / base_jobs:.1f}x jobs; target < 10 s: "
          f"{'met' if study_s < 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
