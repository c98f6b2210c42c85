"""What a lab sweep costs in S3 reads, pod disk and GPU idle time: chips staged versus streamed.

Measures the bytes a 1024 px chip takes in a shard (tar member and header included), JPEG
(the default quality) and PNG, on sample scenes (nadir.datasets.sample: synthetic imagery with
sensor-like noise) chipped by nadir's own chipper, then computes per run and for the sweep of
docs/kubernetes.md (3 datasets x 10 models x 3 repeats: a train and an evaluate pod per run,
180 GPU pods) the S3 bytes read, the ephemeral storage of each GPU pod and the time its GPU
waits for data:

- staged (before): train, evaluate and plot_detections each stage every shard of the dataset;
  the GPU waits while its pod downloads them.
- streamed (after): the GPU pods read shards by ranged reads; training reads the train chips'
  bytes once per epoch (or once, with a node-local cache that holds them), evaluation the val
  chips' once, the figure job the few chips it draws; the GPU waits for the first batch only.

Dataset sizes and the per-pod read rate are inputs (their sources in DATASETS and --read-mb-s);
everything else follows from them and the measured bytes per chip. Usage:

    python bench/sweep_storage.py                     # measure, then print the tables
    python bench/sweep_storage.py --epochs 24 --read-mb-s 500
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("GDAL_PAM_ENABLED", "NO")

from nadir.chip.shard import chip_shard  # noqa: E402
from nadir.datasets.sample import generate_scene  # noqa: E402
from nadir.raster.chip_params import ChipParams  # noqa: E402

CHIP, OVERLAP = 1024, 200
GB = 1e9


@dataclass(frozen=True)
class Dataset:
    name: str
    chips: int  # 1024 px chips with 200 px overlap, train and val
    val_fraction: float
    basis: str  # where the chip count comes from


def windows(side: int) -> int:
    """Windows along one side, as nadir cuts them (the last one shifted back to the edge)."""
    return 1 if side <= CHIP else math.ceil((side - CHIP) / (CHIP - OVERLAP)) + 1


# Chip counts computed from each dataset's size as the repository records it (not measured
# here: the datasets are not on this machine). The PNG density converts a PNG archive's bytes
# into pixels; windows of 824 px stride cover each pixel about (1024/824)^2 times.
def datasets(png_bytes_per_pixel: float) -> list[Dataset]:
    stride = (CHIP - OVERLAP) ** 2
    return [
        Dataset("DOTA v1.5", round(35e9 / png_bytes_per_pixel / stride), 458 / 1869,
                "1,869 labelled PNG scenes, about 35 GB (docs/kubernetes.md, fetch), at the "
                "measured PNG density; val 458 of 1,869 (DESIGN.md 4)"),
        Dataset("RarePlanes (real)", round(60e9 / 3 / stride), 0.25,
                "real scenes about 60 GB (profiles/nautilus, fetch), 8-bit RGB GeoTIFF at 3 "
                "bytes a pixel; val a quarter"),
        Dataset("xView", 847 * windows(3000) ** 2, 0.25,
                "847 GeoTIFFs of about 3,000 px a side (DESIGN.md 4): 4 x 4 windows each; val "
                "a quarter (the config's val_fraction)"),
    ]


def bytes_per_chip(image_format: str, workdir: Path, scenes: int, size: int) -> tuple[float, float]:
    """(bytes per chip in the shard, scene PNG bytes per pixel) of sample scenes cut into
    1024 px chips in `image_format`."""
    images, png_bytes = {}, 0
    for n in range(scenes):
        image, _ = generate_scene(np.random.default_rng([0, n]), size, 60)
        path = workdir / f"scene-{n}.png"
        image.save(path, "PNG")
        png_bytes += path.stat().st_size
        images[f"S{n}"] = path
    params = ChipParams(size=CHIP, overlap=OVERLAP, image_format=image_format, empty_keep=1.0)
    tar_path = workdir / f"shard-{image_format}.tar"
    chip_shard([{"scene": s, "split": "train"} for s in images], {}, images, params, tar_path,
               workdir / f"shard-{image_format}.json", threads=2)
    with tarfile.open(tar_path) as tar:
        chips = sum(1 for member in tar if member.isfile())
    return tar_path.stat().st_size / chips, png_bytes / (scenes * size * size)


def gb(value: float) -> str:
    return f"{value / GB:,.1f}" if value < 100 * GB else f"{value / GB:,.0f}"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f} h" if seconds >= 360 else f"{seconds:,.0f} s"


def table(per_chip: float, sets: list[Dataset], args) -> list[str]:
    """Markdown rows: per dataset (one run) and the sweep, staged and streamed."""
    rate = args.read_mb_s * 1e6
    rows = ["| dataset (chips) | shards | | S3 read per run | train pod disk | evaluate pod "
            "disk | GPU idle per run (train + evaluate) |", "|---|---|---|---|---|---|---|"]
    totals = {"staged": [0.0, 0.0], "streamed": [0.0, 0.0], "cached": [0.0, 0.0]}
    runs = args.models * args.repeats
    for d in sets:
        shards = d.chips * per_chip
        train, val = shards * (1 - d.val_fraction), shards * d.val_fraction
        batch = args.batch_size * per_chip
        staged_read = 3 * shards  # train, evaluate, plot_detections stage every shard
        streamed_read = args.epochs * train + val + args.drawn * per_chip
        cached_read = train + val + args.drawn * per_chip
        staged_idle = 2 * shards / rate
        streamed_idle = 2 * batch / rate
        rows += [
            f"| {d.name} ({d.chips:,}) | {gb(shards)} GB | staged | {gb(staged_read)} GB | "
            f"{gb(1.0 * shards + 10 * GB)} GB | {gb(shards + 2 * GB)} GB | "
            f"{hours(staged_idle)} |",
            f"| | | streamed, {args.epochs} epochs | {gb(streamed_read)} GB | 10 GB | 2 GB | "
            f"{hours(streamed_idle)} |",
            f"| | | streamed, node cache | {gb(cached_read)} GB | {gb(train + 10 * GB)} GB | "
            f"2 GB | {hours(streamed_idle)} |",
        ]
        for key, read, idle in (("staged", staged_read, staged_idle),
                                ("streamed", streamed_read, streamed_idle),
                                ("cached", cached_read, streamed_idle)):
            totals[key][0] += runs * read
            totals[key][1] += runs * idle
    names = {"staged": "staged", "streamed": f"streamed, {args.epochs} epochs",
             "cached": "streamed, node cache"}
    rows.append(f"| **sweep** ({len(sets)} x {args.models} x {args.repeats} runs, "
                f"{2 * len(sets) * runs} GPU pods) | | | | | | |")
    for key, (read, idle) in totals.items():
        rows.append(f"| | | {names[key]} | {gb(read)} GB | | | {hours(idle)} GPU-time |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=2, help="sample scenes measured")
    parser.add_argument("--scene-size", type=int, default=3072)
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per run")
    parser.add_argument("--batch-size", type=int, default=8, help="chips per training step")
    parser.add_argument("--drawn", type=int, default=9, help="chips plot_detections draws")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--read-mb-s", type=float, default=250.0,
                        help="one pod's read rate from S3, MB/s (assumed, not measured)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measured = {fmt: bytes_per_chip(fmt, Path(tmp), args.scenes, args.scene_size)
                    for fmt in ("jpeg", "png")}
    density = measured["png"][1]
    print(f"measured on {args.scenes} sample scenes of {args.scene_size} px, {CHIP} px chips, "
          f"{OVERLAP} px overlap: JPEG {measured['jpeg'][0]:,.0f} bytes a chip, PNG "
          f"{measured['png'][0]:,.0f} (ratio {measured['jpeg'][0] / measured['png'][0]:.3f}); "
          f"scenes as PNG {density:.2f} bytes a pixel")
    sets = datasets(density)
    for d in sets:
        print(f"- {d.name}: {d.chips:,} chips ({d.basis})")
    for fmt in ("jpeg", "png"):
        print(f"\n{fmt.upper()} chips ({measured[fmt][0] / 1e6:.3f} MB each), "
              f"{args.read_mb_s:g} MB/s per pod, {args.epochs} epochs:\n")
        print("\n".join(table(measured[fmt][0], sets, args)))


if __name__ == "__main__":
    main()
