"""Benchmark: nadir's streaming inference against loading the whole scene and slicing it, and
against SAHI's sliced prediction when SAHI can be imported.

Generates a large 3-band uint8 scene (bench/chipping.py's generator: tiled, deflate), then runs
each variant in its own subprocess so that its peak resident memory (VmHWM) can be measured:

- nadir: `nadir.predict.detect.detect_scene` (windows read from the file with chipping's
  reader, the next batch read while the model runs, scene merge with class-wise NMS).
- baseline: reads the whole scene into one array (as OpenCV's imread would), slices the same
  windows out of it, runs the same detector on the same batches and the same merge.
- sahi: `sahi.predict.get_sliced_prediction` on the whole scene (SAHI reads it into memory) with
  the same torchvision model wrapped as a SAHI detection model; run only when `--sahi-path`
  (a folder where SAHI and its dependencies were installed, e.g. with pip's --target) imports.

`--detector none` times the reading and merging alone (a detector that finds nothing);
`--detector model` runs an untrained SSDlite on every window, so the model's cost is in the
figures too (on a CPU that takes hours at 20,000 px: use a smaller `--size`). Prints windows/s,
seconds, peak RSS and the peak above the process's RSS once imports and model are loaded, then
the ratios. Usage:

    python bench/inference.py --sahi-path /tmp/sahi             # 20,000 px, reading and merging
    python bench/inference.py --size 4000 --detector model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("GDAL_PAM_ENABLED", "NO")
# As every `nadir` command does (cli.main): torch's OpenMP threads sleep while they wait
# instead of spinning, so the read-ahead thread of nadir's variant gets a core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODEL = "ssdlite320_mobilenet_v3_large"
CATEGORIES = [{"id": 1, "name": "vehicle"}]


def vm(field: str) -> int:
    """A /proc/self/status memory figure in bytes (VmHWM: peak RSS; VmRSS: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def save_model(path: Path, window: int, overlap: int) -> None:
    """An untrained SSDlite saved as a training run saves it, with the chip parameters
    inference cuts its windows with (throughput needs no training)."""
    import torch

    from nadir.raster.chip_params import ChipParams
    from nadir.train.models import build_detector

    torch.manual_seed(0)
    model = build_detector(MODEL, len(CATEGORIES), window)
    chipping = ChipParams(size=window, overlap=overlap).to_record()
    torch.save({"model": MODEL, "num_classes": len(CATEGORIES), "chipping": chipping,
                "categories": CATEGORIES, "state_dict": model.state_dict()}, path)


def detector_for(args):
    """The detector every variant calls."""
    if args.detector == "none":
        return lambda chips: [[] for _ in chips]
    from nadir.train import window_detector

    detect, _, _ = window_detector(Path(args.weights), 0.3, 100, args.threads)
    return detect


def run_nadir(args) -> dict:
    from nadir.predict import InferenceSettings, SceneSource
    from nadir.predict.detect import detect_scene, reads_ahead
    from nadir.raster.chip_params import ChipParams
    from nadir.train import device_name

    params = ChipParams(size=args.window, overlap=args.overlap)
    detect = detector_for(args)
    import torchvision.ops  # noqa: F401 - the merge's NMS, imported before the timer
    settled = vm("VmRSS")
    started = time.perf_counter()
    source = SceneSource("scene", args.scene)
    result = detect_scene(source, params, detect, InferenceSettings(batch_size=args.batch_size),
                          threads=args.threads,
                          read_ahead=args.detector == "none" or reads_ahead(source, device_name()))
    return {"windows": result.windows["read"], "seconds": time.perf_counter() - started,
            "detections": len(result.detections), "settled_rss": settled}


def run_baseline(args) -> dict:
    import rasterio
    from rasterio.windows import Window

    from nadir.protocols.scenes import merge_overlaps, to_scene_coordinates
    from nadir.raster.chip_params import ChipParams
    from nadir.raster.windows import window_offsets

    params = ChipParams(size=args.window, overlap=args.overlap)
    detect = detector_for(args)
    import torchvision.ops  # noqa: F401 - the merge's NMS, imported before the timer
    settled = vm("VmRSS")
    started = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=16 << 20), rasterio.open(args.scene) as src:
        image = np.empty((src.count, src.height, src.width), np.uint8)
        for y0 in range(0, src.height, 1024):
            count = min(1024, src.height - y0)
            src.read(window=Window(0, y0, src.width, count), out=image[:, y0:y0 + count])
    _, height, width = image.shape
    windows, detections, batch = [], [], []

    def flush():
        chips = [image[:, y:y + params.size, x:x + params.size] for x, y in batch]
        for (x0, y0), found in zip(batch, detect(chips), strict=True):
            windows.append({"id": len(windows), "scene": "scene", "x": x0, "y": y0})
            detections.extend(d | {"image_id": windows[-1]["id"]} for d in found)
        batch.clear()

    for y0 in window_offsets(height, params.size, params.overlap):
        for x0 in window_offsets(width, params.size, params.overlap):
            batch.append((x0, y0))
            if len(batch) == args.batch_size:
                flush()
    if batch:
        flush()
    shifted, _ = to_scene_coordinates(
        detections, {"images": windows},
        [{"id": 1, "scene": "scene", "width": width, "height": height}])
    merged = merge_overlaps(shifted, 0.3)
    return {"windows": len(windows), "seconds": time.perf_counter() - started,
            "detections": len(merged), "settled_rss": settled}


def run_sahi(args) -> dict:
    """SAHI's sliced prediction with the same detector behind SAHI's model interface."""
    sys.path.insert(0, args.sahi_path)
    import rasterio
    from sahi.models.base import DetectionModel
    from sahi.predict import get_sliced_prediction
    from sahi.prediction import ObjectPrediction

    detect = detector_for(args)
    windows = []

    class Wrapped(DetectionModel):
        def load_model(self):
            self.model = detect

        def perform_inference(self, image):
            windows.append(1)
            self._original_predictions = detect([np.ascontiguousarray(image.transpose(2, 0, 1))])

        def _create_object_prediction_list_from_original_predictions(
                self, shift_amount_list=None, full_shape_list=None):
            shift = (shift_amount_list or [[0, 0]])[0]
            full = (full_shape_list or [None])[0]
            self._object_prediction_list_per_image = [[
                ObjectPrediction(bbox=[x, y, x + w, y + h], category_id=d["category_id"],
                                 category_name=str(d["category_id"]), score=d["score"],
                                 shift_amount=shift, full_shape=full)
                for d in found for x, y, w, h in [d["bbox"]]]
                for found in self._original_predictions]

    model = Wrapped(confidence_threshold=0.3, device="cpu", load_at_init=True)
    settled = vm("VmRSS")
    started = time.perf_counter()
    with rasterio.open(args.scene) as src:  # SAHI slices an image it holds whole
        image = np.ascontiguousarray(src.read().transpose(1, 2, 0))
    overlap = args.overlap / args.window
    result = get_sliced_prediction(image, model, slice_height=args.window,
                                   slice_width=args.window, overlap_height_ratio=overlap,
                                   overlap_width_ratio=overlap, perform_standard_pred=False,
                                   postprocess_type="NMS", postprocess_match_threshold=0.3,
                                   postprocess_class_agnostic=False, verbose=0)
    return {"windows": len(windows), "seconds": time.perf_counter() - started,
            "detections": len(result.object_prediction_list), "settled_rss": settled}


VARIANTS = {"nadir": run_nadir, "baseline": run_baseline, "sahi": run_sahi}


def child(args) -> None:
    figures = VARIANTS[args.variant](args)
    print(json.dumps(figures | {"peak_rss": vm("VmHWM")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="scene side in pixels")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--detector", choices=["none", "model"], default="none")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each variant, alternating; the fastest counts")
    parser.add_argument("--sahi-path", help="a folder SAHI was installed into (pip --target)")
    parser.add_argument("--dir", default="/tmp/nadir-bench-inference")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--scene", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    from chipping import generate_scene, scene_objects

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene-{args.size}.tif"
    if not scene.exists():
        print(f"generating a {args.size:,} px scene in {scene}", file=sys.stderr)
        generate_scene(scene, args.size, "tiled", scene_objects(args.size, args.size // 20, 0), 0)
    weights = work / f"model-{args.window}.pt"
    if not weights.exists():
        save_model(weights, args.window, args.overlap)
    variants = ["nadir", "baseline"] + (["sahi"] if args.sahi_path else [])
    results: dict[str, dict] = {}
    print(f"load average {os.getloadavg()[0]:.2f} before", flush=True)
    for variant in variants * args.repeat:
        command = [sys.executable, __file__, "--variant", variant, "--scene", str(scene),
                   "--weights", str(weights), "--window", str(args.window), "--overlap",
                   str(args.overlap), "--batch-size", str(args.batch_size), "--threads",
                   str(args.threads), "--detector", args.detector]
        if variant == "sahi":
            command += ["--sahi-path", args.sahi_path]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{variant}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{variant:9s} {r['windows']:6d} windows {r['seconds']:8.1f} s "
              f"{r['windows'] / r['seconds']:8.1f} windows/s  peak RSS "
              f"{r['peak_rss'] / 2**20:7.0f} MiB, above imports and model "
              f"{(r['peak_rss'] - r['settled_rss']) / 2**20:7.0f} MiB, "
              f"{r['detections']} detections; load {os.getloadavg()[0]:.2f}", flush=True)
        if variant not in results or r["seconds"] < results[variant]["seconds"]:
            results[variant] = r
    print(f"best of {args.repeat} each:")
    if {"nadir", "baseline"} <= results.keys():
        for other in [v for v in results if v != "nadir"]:
            n, b = results["nadir"], results[other]
            speed = (n["windows"] / n["seconds"]) / (b["windows"] / b["seconds"])
            above = (n["peak_rss"] - n["settled_rss"]) / max(1, b["peak_rss"] - b["settled_rss"])
            print(f"nadir / {other}: throughput {speed:.2f}, peak RSS "
                  f"{n['peak_rss'] / b['peak_rss']:.3f}, peak above imports {above:.3f}")


if __name__ == "__main__":
    main()
