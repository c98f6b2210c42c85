"""Benchmark: the training loader's CPU seconds per chip, by step, at 1,024 px JPEG and PNG.

What a loader worker does for each chip of a training batch, as `nadir.train.data.ShardChips`
and `collate` do it: decode the chip (`decode_chip`: Pillow, JPEG or PNG only), turn it into a
CHW tensor, apply one of the 8 symmetries with its boxes (`random_flip_rotate`,
`flip_rotate_points`), then collate a batch; the conversion to float in [0, 1] that the
training process now does on the model's device (`ShardChips.model_inputs`) is timed on its
own ("float"), the loader's cost before that change. Each step is timed
in CPU seconds of this thread (`time.thread_time`), torch on one thread, over `--chips` chips
made to compress like overhead imagery, median of `--repeats` rounds. The baseline in the same
run is reading the chip's bytes from the page cache (what the loader costs without decoding).

The figures give the loader workers (and so the CPUs) a GPU job needs to feed the GPU at R
images per second: workers = ceil(R x seconds per chip / 0.8) (a worker kept 80 % busy leaves
room for the noise of a shared node), plus one CPU for the process that drives the GPU
(`nadir.train.loader.gpu_job_cpus`, which holds the figures measured here).

    python bench/loader_cost.py
    python bench/loader_cost.py --chips 64 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from nadir.storage.shards import decode_chip  # noqa: E402
from nadir.train.data import collate, flip_rotate_points, random_flip_rotate  # noqa: E402

SIDE = 1024
BATCH = 8


def overhead_like(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.integers(40, 200, (SIDE // 32, SIDE // 32, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((SIDE, SIDE), Image.BILINEAR),
                        dtype=np.int16)
    pixels += rng.normal(0, 9, pixels.shape).astype(np.int16)
    return pixels.clip(0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, image_format: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, image_format, **({"quality": 90} if image_format == "JPEG"
                                                       else {}))
    return out.getvalue()


def one_round(files: list[Path], rng: np.random.Generator) -> dict[str, float]:
    """CPU seconds per chip of each step over every file."""
    spent = dict.fromkeys(("read", "decode", "augment", "collate", "float"), 0.0)
    boxes = torch.tensor([[10.0, 20.0, 200.0, 240.0]] * 6)
    quads = torch.tensor([[10.0, 20.0, 200.0, 20.0, 200.0, 240.0, 10.0, 240.0]] * 6)
    batch = []
    for path in files:
        t0 = time.thread_time()
        data = path.read_bytes()
        t1 = time.thread_time()
        pixels = decode_chip(data, path)
        t2 = time.thread_time()
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        code = int(rng.integers(1, 8))
        flip_rotate_points(quads, code, SIDE, SIDE)
        tensor, moved = random_flip_rotate(tensor, boxes, code)
        item = (tensor, {"boxes": moved})
        t3 = time.thread_time()
        batch.append(item)
        if len(batch) == BATCH:
            collate(batch)
            batch = []
        t4 = time.thread_time()
        tensor.contiguous().float() / 255.0  # no longer the loader's: on the model's device
        t5 = time.thread_time()
        for step, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                                 strict=True):
            spent[step] += seconds
    return {step: seconds / len(files) for step, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chips", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    chips = [overhead_like(rng) for _ in range(args.chips)]
    folder = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    print(f"{args.chips} chips of {SIDE} px, batch {BATCH}, torch on 1 thread, median of "
          f"{args.repeats}; load {os.getloadavg()[0]:.1f}")
    totals = {}
    for image_format in ("JPEG", "PNG"):
        files = []
        for number, pixels in enumerate(chips):
            path = folder / f"chip-{number}.{image_format.lower()}"
            path.write_bytes(encoded(pixels, image_format))
            files.append(path)
        size = sum(p.stat().st_size for p in files) / len(files)
        rounds = [one_round(files, rng) for _ in range(args.repeats)]
        median = {step: sorted(r[step] for r in rounds)[len(rounds) // 2] for step in rounds[0]}
        total = sum(median.values()) - median["float"]
        totals[image_format] = total
        print(f"{image_format:4s} ({size / 1e3:.0f} KB a chip): " + ", ".join(
            f"{step} {1e3 * s:.2f} ms" for step, s in median.items())
            + f"; loader total (without float) {1e3 * total:.2f} ms a chip ({1 / total:.1f} "
            f"chips/s per CPU), {total / median['read']:.0f} x the read alone; with the "
            f"float in the loader (before) {1e3 * (total + median['float']):.2f} ms, "
            f"{(total + median['float']) / total:.2f} x")
    for rate in (50, 100, 200, 400):
        cpus = {f: int(np.ceil(rate * s / 0.8)) + 1 for f, s in totals.items()}
        print(f"GPU at {rate} img/s: {cpus['JPEG']} CPUs (JPEG), {cpus['PNG']} CPUs (PNG)")
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
