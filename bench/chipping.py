"""Benchmark: nadir's windowed chipping against whole-image-in-memory chipping, and pure encoding.

Generates a large 3-band uint8 scene (written window by window, so generating it is itself
memory-bounded) with randomly placed rotated objects, then chips it, each run in its own
subprocess so that its peak resident memory can be measured:

- baseline: reads the whole image into one array, slices every window out of it, clips the
  objects (a bounds check, then shapely) and encodes the chips one after another in one thread.
  This is how the common DOTA tooling splits a scene (it loads the image with OpenCV).
- nadir: `nadir.chip.shard.chip_shard` with the same windows, rules and encoder, at `--threads`
  threads (the chip rule's default, 2).
- encode: only the JPEG encoding of the same chips (read beforehand, outside the timer), on one
  thread and on `--threads` threads (nadir's encoder releases Python's lock, so threads encode
  in parallel): the ceiling for any chipper that uses this encoder on as many cores.
- read: only nadir's reading of the same windows (GDAL decoding, on one thread), no encoding:
  its CPU time is what decoding the file costs nadir, the other part of the arithmetic.

All runs keep every chip (`empty_keep` 1), so they encode the same chips; the script checks that
nadir's and the baseline's chips are byte-identical. Each run is repeated `--repeat` times,
round-robin, and the fastest counts. It prints chips/s, wall time, CPU time (of the whole
process for baseline and nadir, of the timed part for encode and read) and peak RSS (VmHWM)
per run, then the ratios. Usage:

    python bench/chipping.py                      # 20,000 px: deflate and raw GeoTIFF, PNG
    python bench/chipping.py --size 4000 --layout png
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import resource
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("GDAL_PAM_ENABLED", "NO")

from nadir.chip.encode import encode  # noqa: E402
from nadir.datasets.tables import Annotation  # noqa: E402
from nadir.raster.chip_params import ChipParams  # noqa: E402
from nadir.raster.windows import window_offsets  # noqa: E402

LAYOUTS = {  # name: (file suffix, description)
    "tiled": ("tif", "tiled GeoTIFF, 512 px blocks, deflate"),
    "raw": ("raw.tif", "tiled GeoTIFF, 512 px blocks, uncompressed"),
    "png": ("png", "PNG (as DOTA ships its scenes)"),
}
BASELINE_GDAL_CACHE = 16 << 20  # the baseline reads once; a large cache would only inflate it


# --- the scene ------------------------------------------------------------------------------

def scene_objects(size: int, count: int, seed: int) -> list[Annotation]:
    """Rotated rectangles of 16-96 px anywhere in the scene (many cross chip borders)."""
    rng = np.random.default_rng(seed)
    objects = []
    for i in range(count):
        cx, cy = rng.uniform(50, size - 50, 2)
        length, width = rng.uniform(16, 96), rng.uniform(8, 40)
        angle = rng.uniform(0, math.pi)
        c, s = math.cos(angle), math.sin(angle)
        corners = []
        for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            x, y = dx * length / 2, dy * width / 2
            corners += [round(cx + c * x - s * y, 1), round(cy + s * x + c * y, 1)]
        objects.append(Annotation("scene", i, "vehicle", 0, corners))
    return objects


def generate_scene(path: Path, size: int, layout: str, objects: list[Annotation],
                   seed: int) -> None:
    """Smooth fields, fine noise and the objects, written 256 rows at a time."""
    import rasterio
    import rasterio.shutil
    from PIL import Image, ImageDraw
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 7, (3, 509, 521)).astype(np.float32)  # tiled with a prime period
    tif = path if layout != "png" else path.with_suffix(".source.tif")
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32631", "transform": from_origin(400_000.0, 5_000_000.0, 0.5, 0.5),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "photometric": "RGB",
               "compress": "deflate" if layout == "tiled" else "none"}
    strip_rows = 256
    bounds = np.array([[min(o.polygon[1::2]), max(o.polygon[1::2])] for o in objects])
    columns = np.arange(size, dtype=np.float32)
    started = time.monotonic()
    with rasterio.open(tif, "w", **profile) as dst:
        for y0 in range(0, size, strip_rows):
            rows = min(strip_rows, size - y0)
            y = np.arange(y0, y0 + rows, dtype=np.float32)[:, None]
            strip = np.empty((rows, size, 3), dtype=np.uint8)
            for band in range(3):
                field = (105 + 35 * np.sin(columns / (600 + 90 * band)) * np.cos(y / 800)
                         + 20 * np.sin((columns + 1.7 * y) / (210 + 40 * band)))
                field += noise[band][np.arange(y0, y0 + rows)[:, None] % 509,
                                     np.arange(size)[None, :] % 521]
                strip[:, :, band] = np.clip(field, 0, 255)
            image = Image.fromarray(strip)
            draw = ImageDraw.Draw(image)
            for i in np.flatnonzero((bounds[:, 1] >= y0) & (bounds[:, 0] < y0 + rows)):
                p = objects[i].polygon
                draw.polygon([(p[k], p[k + 1] - y0) for k in range(0, 8, 2)],
                             fill=(220 - 30 * (i % 4), 210, 200 + 15 * (i % 3)))
            dst.write(np.asarray(image).transpose(2, 0, 1),
                      window=rasterio.windows.Window(0, y0, size, rows))
            if (y0 // strip_rows) % 20 == 0:
                print(f"  generating: rows {y0 + rows}/{size}, {time.monotonic() - started:.0f} s",
                      file=sys.stderr, flush=True)
    if layout == "png":  # GDAL writes PNG by streaming a copy of another raster, row by row
        rasterio.shutil.copy(tif, path, driver="PNG", ZLEVEL=6)
        tif.unlink()


# --- the runs (each in its own process) -----------------------------------------------------

def run_nadir(scene: Path, objects: list[Annotation], params: ChipParams, threads: int,
              out: Path) -> int:
    from nadir.chip.shard import chip_shard

    result = chip_shard([{"scene": "scene", "split": "train"}], {"scene": objects},
                        {"scene": scene}, params, out, out.with_suffix(".json"), threads=threads)
    return result["scenes"]["scene"]["chips_written"]


def whole_image_windows(scene: Path, params: ChipParams):
    """The baseline's reading: the whole image as one array, then one slice per window."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.Env(GDAL_CACHEMAX=BASELINE_GDAL_CACHE), rasterio.open(scene) as src:
        # Filled in strips: one read of the whole PNG would make GDAL decode it into a second
        # whole-image buffer, a copy that OpenCV's imread (what DOTA tooling uses) does not make.
        image = np.empty((src.height, src.width, src.count), dtype=np.uint8)  # as OpenCV's
        for y0 in range(0, src.height, 1024):
            rows = min(1024, src.height - y0)
            src.read(window=Window(0, y0, src.width, rows),
                     out=image[y0:y0 + rows].transpose(2, 0, 1))
    height, width = image.shape[:2]
    for y0 in window_offsets(height, params.size, params.overlap):
        for x0 in window_offsets(width, params.size, params.overlap):
            chip = np.full((params.size, params.size, 3), params.pad_value, np.uint8)
            window = image[y0:y0 + params.size, x0:x0 + params.size]
            chip[:window.shape[0], :window.shape[1]] = window
            yield x0, y0, chip


def clip_to_window(objects: list[Annotation], x0: int, y0: int, size: int,
                   min_visible: float) -> list[dict]:
    """The baseline's clipping: every object's bounds against the window, then shapely."""
    from shapely.geometry import Polygon, box

    window, kept = box(x0, y0, x0 + size, y0 + size), []
    for obj in objects:
        xs, ys = obj.polygon[0::2], obj.polygon[1::2]
        if max(xs) <= x0 or min(xs) >= x0 + size or max(ys) <= y0 or min(ys) >= y0 + size:
            continue
        shape = Polygon(list(zip(xs, ys, strict=True)))
        part = shape.intersection(window)
        if part.area >= min_visible * shape.area:
            kept.append({"object": obj.object, "bounds": part.bounds})
    return kept


def run_baseline(scene: Path, objects: list[Annotation], params: ChipParams, out: Path) -> int:
    chips = 0
    with tarfile.open(out, "w") as tar:
        for x0, y0, chip in whole_image_windows(scene, params):
            clip_to_window(objects, x0, y0, params.size, params.min_visible)
            data = encode(chip.transpose(2, 0, 1), params)
            info = tarfile.TarInfo(f"scene_{x0}_{y0}.{params.extension}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            chips += 1
    return chips


def run_encode(scene: Path, params: ChipParams, threads: int) -> tuple[int, float, float]:
    """Encode the same chips, read in batches outside the timer; returns (chips, seconds,
    CPU seconds) of the encoding alone."""
    import rasterio
    from rasterio.windows import Window

    chips, seconds, cpu, batch = 0, 0.0, 0.0, []
    with rasterio.open(scene) as src, ThreadPoolExecutor(threads) as pool:
        xs = window_offsets(src.width, params.size, params.overlap)
        windows = [(x, y) for y in window_offsets(src.height, params.size, params.overlap)
                   for x in xs]
        for n, (x0, y0) in enumerate(windows, start=1):
            pixels = src.read(window=Window(x0, y0, params.size, params.size))
            batch.append(pixels)
            if len(batch) == 8 * threads or n == len(windows):
                started, cpu_started = time.perf_counter(), time.process_time()
                list(pool.map(lambda chip: encode(chip, params), batch))
                seconds += time.perf_counter() - started
                cpu += time.process_time() - cpu_started
                chips += len(batch)
                batch = []
    return chips, seconds, cpu


def run_read(scene: Path, params: ChipParams) -> tuple[int, float, float]:
    """nadir's reading of every window (WindowReader, GDAL on one thread), nothing else;
    returns (chips, seconds, CPU seconds)."""
    import rasterio
    from rasterio.windows import Window

    from nadir.raster.windows import WindowReader, gdal_cache_bytes

    chips = 0
    with rasterio.open(scene) as src, \
            rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(src, params.size)):
        started, cpu_started = time.perf_counter(), time.process_time()
        reader = WindowReader(src, [1, 2, 3], params.size)
        chip = np.empty((3, params.size, params.size), np.uint8)
        for y0 in window_offsets(src.height, params.size, params.overlap):
            for x0 in window_offsets(src.width, params.size, params.overlap):
                reader.read(Window(x0, y0, params.size, params.size), chip)
                chips += 1
        return chips, time.perf_counter() - started, time.process_time() - cpu_started


def child(args) -> None:
    """One measured run; prints a JSON line (chips, seconds)."""
    params = ChipParams(size=args.chip, overlap=args.overlap, empty_keep=1.0)
    objects = scene_objects(args.size, args.objects, args.seed)
    scene, out = Path(args.scene), Path(args.out)
    started = time.perf_counter()
    if args.run == "nadir":
        chips = run_nadir(scene, objects, params, args.threads, out)
    elif args.run == "baseline":
        chips = run_baseline(scene, objects, params, out)
    elif args.run == "encode":
        chips, seconds, cpu_seconds = run_encode(scene, params, args.threads)
    else:
        chips, seconds, cpu_seconds = run_read(scene, params)
    if args.run in ("nadir", "baseline"):
        seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_seconds = usage.ru_utime + usage.ru_stime
    print(json.dumps({"chips": chips, "seconds": seconds, "peak_rss_mib": peak_rss_mib(),
                      "cpu_seconds": cpu_seconds}))


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; getrusage would report the parent's peak
    when the parent was larger at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(args, run: str, scene: Path, threads: int, out: Path) -> dict:
    """Run one benchmark in a child process; returns its chips, seconds and peak RSS."""
    cmd = [sys.executable, __file__, "--child", run, "--scene", str(scene), "--out", str(out),
           "--threads", str(threads), "--size", str(args.size), "--chip", str(args.chip),
           "--overlap", str(args.overlap), "--objects", str(args.objects),
           "--seed", str(args.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{run} failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def chip_digests(tar_path: Path) -> dict[str, str]:
    with tarfile.open(tar_path) as tar:
        return {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                for m in tar.getmembers()}


def bench_layout(args, layout: str, workdir: Path) -> None:
    suffix, description = LAYOUTS[layout]
    scene = workdir / f"scene-{args.size}-{args.seed}.{suffix}"
    objects = scene_objects(args.size, args.objects, args.seed)
    if not scene.exists():
        started = time.monotonic()
        generate_scene(scene, args.size, layout, objects, args.seed)
        print(f"generated {scene} ({scene.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.monotonic() - started:.0f} s", flush=True)
    # Round-robin repeats, best wall time of each: other work on a shared machine slows
    # whichever run it overlaps, and the best of a few repeats is the least disturbed one.
    runs = [("baseline", 1), ("nadir", args.threads), ("encode", 1), ("read", 1)]
    if args.threads > 1:
        runs.insert(3, ("encode", args.threads))
    load_before = os.getloadavg()[0]
    results: dict[tuple[str, int], dict] = {}
    for _ in range(args.repeat):
        for run, threads in runs:
            r = measure(args, run, scene, threads, workdir / f"{run}.tar")
            best = results.get((run, threads))
            if best is None or r["seconds"] < best["seconds"]:
                results[run, threads] = {**r, "peak_rss_mib": max(
                    r["peak_rss_mib"], best["peak_rss_mib"] if best else 0.0)}
            else:
                best["peak_rss_mib"] = max(best["peak_rss_mib"], r["peak_rss_mib"])
    if chip_digests(workdir / "baseline.tar") != chip_digests(workdir / "nadir.tar"):
        raise SystemExit("nadir's chips differ from the baseline's")

    chips = results["baseline", 1]["chips"]
    print(f"\n{args.size} x {args.size} px, 3-band uint8, {description}; {args.objects} "
          f"objects; {args.chip} px chips, {args.overlap} px overlap, JPEG: {chips} chips; "
          f"best of {args.repeat}, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(f"{'run':<22}{'chips/s':>9}{'wall s':>8}{'CPU s':>8}{'peak RSS MiB':>14}")
    for (run, threads), r in results.items():
        memory = (f"{r['peak_rss_mib']:14.0f}" if run in ("baseline", "nadir")
                  else f"{'-':>14}")  # the encode run holds chips read beforehand
        label = f"{run} ({threads} thread{'s' if threads > 1 else ''})"
        print(f"{label:<22}{r['chips'] / r['seconds']:9.1f}{r['seconds']:8.1f}"
              f"{r['cpu_seconds']:8.1f}{memory}")
    base, nadir = results["baseline", 1], results["nadir", args.threads]
    encode_1, encode_n = results["encode", 1], results["encode", args.threads]
    print(f"nadir: throughput {base['seconds'] / nadir['seconds']:.2f} x baseline, peak memory "
          f"{nadir['peak_rss_mib'] / base['peak_rss_mib']:.3f} x baseline, "
          f"{encode_1['seconds'] / nadir['seconds']:.2f} of pure JPEG encoding on 1 thread, "
          f"{encode_n['seconds'] / nadir['seconds']:.2f} on {args.threads}; CPU time "
          f"{nadir['cpu_seconds'] / base['cpu_seconds']:.2f} x baseline")
    # The ceiling that CPU time sets: reading and encoding must both run on the job's cores,
    # and a PNG is one compressed stream, decoded on one core whatever else runs.
    read_cpu, encode_cpu = results["read", 1]["cpu_seconds"], encode_1["cpu_seconds"]
    floor = max((read_cpu + encode_cpu) / args.threads, read_cpu if layout == "png" else 0.0)
    print(f"ceiling: reading {read_cpu:.1f} + encoding {encode_cpu:.1f} CPU s on "
          f"{args.threads} core(s){', PNG decoding serial' if layout == 'png' else ''}: at "
          f"least {floor:.1f} s, so at most {encode_1['seconds'] / floor:.2f} of pure encoding "
          f"on 1 thread and {encode_n['seconds'] / floor:.2f} on {args.threads}")
    print("nadir's chips are byte-identical to the baseline's", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20_000, help="scene side in pixels")
    parser.add_argument("--chip", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=200)
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2, help="nadir's threads")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, best one counts")
    parser.add_argument("--layout", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--workdir", default="/tmp/nadir-bench-chipping",
                        help="scenes are kept here and reused by later runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["nadir", "baseline", "encode", "read"], dest="run",
                        help=argparse.SUPPRESS)
    parser.add_argument("--scene", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args)
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"CPU cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}")
    for layout in args.layout:
        bench_layout(args, layout, workdir)


if __name__ == "__main__":
    main()
