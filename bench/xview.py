"""Benchmark: converting an xView-format label file of one million features (nadir's index stage).

Writes a synthetic xView GeoJSON (xView's feature layout: `bounds_imcoords` strings, `type_id`,
`image_id`, a geographic polygon and bookkeeping properties; heavily imbalanced classes; some
unnamed ids 75/82 and empty boxes), then runs, each in a fresh process:
- nadir's index of it (streaming parse, annotations written as they are parsed), and
- a baseline that only loads the whole file with `json.load`, as a naive converter would first do.
It prints wall time, CPU seconds and peak resident memory of both, their ratios, and the load
average (on a shared machine CPU seconds move less than wall time).

    python bench/xview.py [--features 1000000] [--images 847] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nadir.datasets.xview import CLASS_NAMES  # noqa: E402

MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {src!r})
start = time.perf_counter()
{body}
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "peak_mib": usage.ru_maxrss / 1024, "result": result}}))
"""

NADIR_INDEX = """
from pathlib import Path
from nadir.index.normalise import index_dataset
from nadir.datasets.tables import IndexTables
spec = {{"format": "xview", "version": None, "class_attribute": "role",
        "split": {{"method": "seeded", "val_fraction": 0.2, "seed": 0}},
        "classes": {{"merge": {{}}, "keep": None, "min_size": 0}}, "on_bad_input": {{}}}}
summary = index_dataset(Path({manifest!r}), Path({files!r}), spec,
                        IndexTables.in_folder(Path({out!r})))
result = {{"objects": summary["objects"], "features": summary["features"],
          "dropped": summary["dropped"]}}
"""

BASELINE = """
with open({labels!r}) as fh:
    data = json.load(fh)
result = {{"features": len(data["features"])}}
"""


def write_labels(path: Path, features: int, images: int, seed: int = 0) -> None:
    """A synthetic xView label file; class frequencies follow a steep power law."""
    rng = random.Random(seed)
    ids = list(CLASS_NAMES) + [75, 82]
    weights = [1.0 / (rank + 1) ** 2.2 for rank in range(len(ids))]
    cumulative = [sum(weights[:i + 1]) for i in range(len(weights))]
    with open(path, "w") as fh:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        for n in range(features):
            x, y = rng.uniform(0, 2900), rng.uniform(0, 2900)
            w, h = rng.uniform(5, 90), rng.uniform(5, 90)
            bounds = "" if n % 5000 == 0 else f"{x:.0f},{y:.0f},{x + w:.0f},{y + h:.0f}"
            lon, lat = 30 + x * 1e-5, 10 + y * 1e-5
            feature = {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[
                    [lon, lat], [lon, lat + h * 1e-5], [lon + w * 1e-5, lat + h * 1e-5],
                    [lon + w * 1e-5, lat], [lon, lat]]]},
                "properties": {
                    "bounds_imcoords": bounds, "edited_by": "wwoscarbecerril",
                    "cat_id": n, "type_id": rng.choices(ids, cum_weights=cumulative)[0],
                    "ingest_time": "2017/07/24 12:49:09.118+00",
                    "index_right": 2356, "image_id": f"{100 + n % images}.tif",
                    "point_geom": "0101000020E6100000A0A81A1A16F14A401E5B7A1A4B7F3E40",
                    "feature_id": 374420 + n, "grade": 1}}
            fh.write(("," if n else "") + json.dumps(feature) + "\n")
        fh.write("]}\n")


def measure(body: str) -> dict:
    code = MEASURE.format(src=str(ROOT / "src"), body=body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=847)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nadir-bench-xview-"))
    files = workdir / "files"
    files.mkdir(parents=True, exist_ok=True)
    labels = files / "xView_train.geojson"
    start = time.perf_counter()
    write_labels(labels, args.features, args.images)
    size_mib = labels.stat().st_size / 2**20
    print(f"wrote {args.features} features ({size_mib:.0f} MiB) in "
          f"{time.perf_counter() - start:.1f} s to {labels}")
    manifest = {"dataset": "bench", "format": "xview", "version": None,
                "labels_without_image": [], "label_files": [labels.name],
                "scenes": [{"scene": str(100 + i), "split": None, "image": f"{100 + i}.tif",
                            "width": 3000, "height": 3000, "bands": 3, "dtype": "uint8",
                            "crs": None, "transform": None} for i in range(args.images)]}
    (workdir / "manifest.json").write_text(json.dumps(manifest))
    print(f"load average {os.getloadavg()[0]:.2f} before the runs")
    nadir = measure(NADIR_INDEX.format(manifest=str(workdir / "manifest.json"),
                                       files=str(files), out=str(workdir / "index")))
    baseline = measure(BASELINE.format(labels=str(labels)))
    print(f"load average {os.getloadavg()[0]:.2f} after the runs")
    print(f"{'run':<34}{'seconds':>10}{'CPU s':>8}{'peak MiB':>12}")
    for label, run in (("nadir index (stream + write CSV)", nadir),
                       ("baseline json.load only", baseline)):
        print(f"{label:<34}{run['seconds']:>10.1f}{run['cpu_seconds']:>8.1f}"
              f"{run['peak_mib']:>12.0f}")
    print(f"speed-up over json.load: {baseline['seconds'] / nadir['seconds']:.2f} x (wall), "
          f"{baseline['cpu_seconds'] / nadir['cpu_seconds']:.2f} x (CPU); peak memory "
          f"{nadir['peak_mib'] / baseline['peak_mib']:.3f} x")
    print(f"nadir kept {nadir['result']['objects']} of {nadir['result']['features']} features; "
          f"dropped {nadir['result']['dropped']}")
    print(f"targets: < 60 s and < 2048 MiB -> "
          f"{'met' if nadir['seconds'] < 60 and nadir['peak_mib'] < 2048 else 'NOT met'}")


if __name__ == "__main__":
    main()
