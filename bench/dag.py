"""How long Snakemake takes to plan a real-size study: a dry run of three datasets x ten models.

The three datasets use the real formats (DOTA v1.5, xView, RarePlanes tiles) with their real
scene counts. Their job lists come from the fetch checkpoint's scene manifest, so the script lays
out what a finished fetch leaves behind — `raw/<dataset>/manifest.json` and empty stand-ins for
the scene files under `raw/<dataset>/files/` (a dry run never reads them) — and times the plan of
everything after it: index, 64 chip shards per dataset, COCO, training and evaluation of every
(dataset, model) pair, figures and summaries. This is the plan a user waits for after every
config edit. (Before the first fetch, the plan holds only the fetch jobs.)

The baseline is the tiny test config (`config/test.yaml`), timed in the same script; each figure
is the median of --repeats runs of a whole `snakemake -n` process, Python start-up included.

    python bench/dag.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nadir.config.catalogue import CATALOGUE  # noqa: E402

MODELS_WANTED = 10
SHARDS = 64  # chipping jobs per dataset, as a real study would use
# name: (format, {split: scene count}): DOTA v1.5's labelled train/val images, xView's 847
# labelled images (one label file; split seeded later), RarePlanes' real 512 px tiles
# (approximate count).
STUDY = {
    "dota": ("dota", {"train": 1411, "val": 458}),
    "xview": ("xview", {None: 847}),
    "rareplanes": ("rareplanes", {"train": 6800, "val": 1700}),
}


def lay_out_fetched(workdir: Path, name: str, fmt: str, splits: dict) -> None:
    """What the fetch checkpoint leaves: the manifest and (empty) scene files."""
    files = workdir / "raw" / name / "files"
    scenes, label_files = [], []
    for i, (split, count) in enumerate(splits.items()):
        folder = f"{i:02d}-{split or 'all'}"
        for n in range(count):
            stem = f"{name}{i}{n:05d}"
            if fmt == "rareplanes":
                image = f"{folder}/PS-RGB_tiled/{stem}.png"
                label = f"{folder}/geojson_aircraft_tiled/{stem}.geojson"
            else:
                image, label = f"{folder}/images/{stem}.png", f"{folder}/labelTxt/{stem}.txt"
            scene = {"scene": stem, "split": split, "image": image, "width": 1024,
                     "height": 1024, "bands": 3, "dtype": "uint8", "crs": None,
                     "transform": None}
            if fmt != "xview":
                scene["label"] = label
            scenes.append(scene)
        if fmt == "xview":
            label_files.append(f"{folder}/xView_train.geojson")
    for relative in [s["image"] for s in scenes] + [s.get("label") for s in scenes] + label_files:
        if relative:
            path = files / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    manifest = {"dataset": name, "format": fmt, "version": "v1.5" if fmt == "dota" else None,
                "sources": [], "scenes": sorted(scenes, key=lambda s: s["scene"]),
                "label_files": label_files, "labels_without_image": []}
    (workdir / "raw" / name / "manifest.json").write_text(json.dumps(manifest))


def study_config(workdir: Path) -> dict:
    names = sorted(CATALOGUE)[:MODELS_WANTED]
    if len(names) < MODELS_WANTED:
        raise SystemExit(f"the catalogue has {len(names)} models, the study needs {MODELS_WANTED}")
    datasets = {}
    for name, (fmt, splits) in STUDY.items():
        lay_out_fetched(workdir, name, fmt, splits)
        datasets[name] = {"format": fmt, "source": [{"url": f"/data/{name}"}]}
        if fmt == "dota":
            datasets[name]["version"] = "v1.5"
    # From scratch, as before `pretrained: auto` (no fetch_weights jobs: figures comparable)
    return {"datasets": datasets, "models": {name: {} for name in names},
            "chipping": {"shards": SHARDS}, "training": {"pretrained": "none"}}


def dry_run(config: dict, workdir: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds of `snakemake -n` in `workdir`, and the number of jobs it planned.

    CPU seconds (user + system of the process) hardly change with the machine's load; wall
    seconds are what the user waits for on an idle machine."""
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(config_path),
               "--replace-workflow-config", "-n", "--cores", "2"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"dry run failed:\n{proc.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
    if not total:
        raise SystemExit(f"no job count in the dry run's output:\n{proc.stdout[-2000:]}")
    return seconds, cpu, int(total.group(1))


def measure(make_config, repeats: int) -> tuple[float, float, int]:
    walls, cpus, jobs = [], [], 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu, jobs = dry_run(make_config(Path(tmp)), Path(tmp))
            walls.append(wall)
            cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus), jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import yaml

    baseline = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    base_s, base_cpu, base_jobs = measure(lambda _: baseline, args.repeats)
    study_s, study_cpu, study_jobs = measure(study_config, args.repeats)
    scenes = sum(sum(splits.values()) for _, splits in STUDY.values())
    print(f"baseline config/test.yaml: {base_jobs} jobs planned in {base_s:.2f} s wall, "
          f"{base_cpu:.2f} s CPU (median of {args.repeats})")
    print(f"study: {len(STUDY)} datasets ({scenes} scenes, {SHARDS} shards each) x "
          f"{MODELS_WANTED} models: {study_jobs} jobs planned in {study_s:.2f} s wall, "
          f"{study_cpu:.2f} s CPU (median of {args.repeats})")
    print(f"ratio study/baseline: {study_s / base_s:.2f}x wall, {study_cpu / base_cpu:.2f}x CPU "
          f"for {study_jobs / base_jobs:.1f}x jobs; target < 10 s: "
          f"{'met' if study_s < 10 else 'NOT met'} (wall), "
          f"{'met' if study_cpu < 10 else 'NOT met'} (CPU)")


if __name__ == "__main__":
    main()
