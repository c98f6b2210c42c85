"""Benchmark: chips streamed from S3 against staged shards and local disk, in one run.

Starts the tests' SeaweedFS server (tests/s3server.py) on this machine, writes two datasets of
1,024 px JPEG chips (q90, coarse structure and fine texture, about 330 KB a chip) whose
shards also hold val chips between the train ones, puts them on the server, and measures:

1. Time to the first training batch, staged (every shard downloaded first, as Snakemake's
   storage staging does, then the loader starts) against streamed (the loader starts at once
   and reads its first batch by ranged reads), at two dataset sizes `--scale` times apart.
   The batch is what the train loop's first step waits for; the step itself is the same
   either way.
2. Bytes S3 sent for one epoch of the training order (`SeededBatches`, with augmentation)
   against the bytes of the chips that epoch uses (target: at most 1.05 x).
3. Chips per second through the train loop's loader (read, decode, augment, collate; the
   same `DataLoader` as `nadir.train.loop._batches`) streamed from S3 against the same shards
   on local disk, alternating `--repeats` times (target: at least 0.9 x).

    python bench/streaming.py                     # 24 and 240 train chips
    python bench/streaming.py --chips 32 --scale 10 --repeats 3 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import s3server  # noqa: E402
import torch  # noqa: E402

from nadir.storage.s3 import client as s3_client  # noqa: E402
from nadir.storage.shards import ShardReader, add_member  # noqa: E402
from nadir.train.data import LoaderBatches, SeededBatches, ShardChips, as_made  # noqa: E402

BUCKET = "bench-streaming"
SIDE = 1024
BATCH = 8
VAL_EVERY = 5  # one chip in five is a val chip, stored between train chips
SETTLE_S = 2.0  # pause after each first-batch case, off the clock


def overhead_like(rng: np.random.Generator) -> bytes:
    """A 1,024 px JPEG q90 chip with coarse structure and fine texture (about 330 KB)."""
    coarse = rng.integers(40, 200, (SIDE // 32, SIDE // 32, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((SIDE, SIDE), Image.BILINEAR),
                        dtype=np.int16)
    pixels += rng.normal(0, 9, pixels.shape).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_dataset(folder: Path, train_chips: int, shards: int, client, prefix: str,
                  pool: list[bytes]) -> dict:
    """Shards (train chips with a val chip after every VAL_EVERY - 1), their S3 copies, and a
    COCO file of the train chips."""
    folder.mkdir(parents=True)
    total = train_chips * VAL_EVERY // (VAL_EVERY - 1)
    images, local, remote = [], [], []
    for index in range(shards):
        path = folder / f"shard-{index:03d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for number in range(index, total, shards):
                name = f"chip-{number:05d}.jpg"
                offset, size = add_member(tar, name, pool[number % len(pool)])
                if number % VAL_EVERY != VAL_EVERY - 1 and len(images) < train_chips:
                    images.append({"id": len(images) + 1, "file_name": name, "shard": index,
                                   "offset": offset, "size": size, "width": SIDE,
                                   "height": SIDE})
        key = f"{prefix}/{path.name}"
        client.upload_file(str(path), BUCKET, key)
        local.append(str(path))
        remote.append(f"s3://{BUCKET}/{key}")
    coco = folder / "train.json"
    coco.write_text(json.dumps({"images": images, "annotations": [],
                                "categories": [{"id": 1, "name": "thing"}]}))
    return {"coco": coco, "local": local, "remote": remote, "images": images,
            "shard_bytes": sum(Path(p).stat().st_size for p in local)}


def loader(dataset: ShardChips, workers: int, seed: int = 0):
    """The train loop's loader (`nadir.train.loop._batches`) over `dataset`."""
    sampler = SeededBatches(len(dataset), BATCH, seed, augment=True)
    return iter(torch.utils.data.DataLoader(
        LoaderBatches(dataset, sampler), batch_size=None, num_workers=workers,
        collate_fn=as_made, persistent_workers=workers > 0))


def first_batch_staged(data: dict, endpoint: str, workdir: Path, workers: int) -> float:
    """Staging as Snakemake's S3 plugin does it: every shard downloaded whole (with a client of
    its own, as the streamed reader makes one), then the loader."""
    started = time.perf_counter()
    client = s3_client(endpoint)
    staged = workdir / f"staged-{time.monotonic_ns()}"
    staged.mkdir()
    paths = []
    for url in data["remote"]:
        key = url.split("/", 3)[3]
        client.download_file(BUCKET, key, str(staged / Path(key).name))
        paths.append(str(staged / Path(key).name))
    seconds = until_first_batch(ShardChips(data["coco"], paths, augment=True), workers, started)
    # After the clock: the copies go, and their writes reach the disk now, not during the next
    # case's measurement (a staged 99 MB left the kernel flushing through the next one).
    shutil.rmtree(staged)
    os.sync()
    return seconds


def first_batch_streamed(data: dict, endpoint: str, workers: int) -> float:
    started = time.perf_counter()
    reader = ShardReader(data["remote"], endpoint=endpoint)
    return until_first_batch(ShardChips(data["coco"], data["remote"], augment=True,
                                        reader=reader), workers, started)


def until_first_batch(dataset: ShardChips, workers: int, started: float) -> float:
    """Seconds from `started` to the loader's first batch; the loader (and its worker
    processes) is shut down after the clock stops, not inside the measured time."""
    batches = loader(dataset, workers)
    next(batches)
    seconds = time.perf_counter() - started
    del batches
    return seconds


def chips_per_second(dataset: ShardChips, workers: int) -> float:
    batches = len(dataset) // BATCH
    it = loader(dataset, workers)
    next(it)  # start-up (workers, first reads) is item 1's business
    started = time.perf_counter()
    for _ in range(batches - 1):
        next(it)
    return (batches - 1) * BATCH / (time.perf_counter() - started)


def separate_cpus(server_pid: int) -> str:
    """Give the S3 server the last CPU and this process (its loader workers inherit it) the
    others: a cluster's storage runs on other machines, and on a shared CPU the server's work
    for each request would be charged to the streamed loader. Says where each runs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "S3 server and loader share the only CPU"
    for thread in os.listdir(f"/proc/{server_pid}/task"):  # every thread of the server
        os.sched_setaffinity(int(thread), {cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))
    return f"S3 server on CPU {cpus[-1]}, this process and its loader on CPU(s) {cpus[:-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chips", type=int, default=24, help="train chips of the small set")
    parser.add_argument("--scale", type=int, default=10, help="the large set: this many times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    server = s3server.start(workdir / "seaweedfs")
    try:
        for name, value in server.env().items():
            if name.startswith("SNAKEMAKE_STORAGE_S3_"):
                os.environ[name] = value
        os.environ["NADIR_STORAGE_S3_ENDPOINT"] = server.endpoint
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        placement = separate_cpus(server.process.pid)
        rng = np.random.default_rng(0)
        pool = [overhead_like(rng) for _ in range(40)]
        print(f"chip pool: {len(pool)} JPEG chips of {SIDE} px, mean "
              f"{sum(map(len, pool)) / len(pool) / 1e3:.0f} KB; batch {BATCH}, "
              f"{args.workers} loader worker(s), load {os.getloadavg()[0]:.1f}; {placement}")
        sizes = {"small": args.chips, "large": args.chips * args.scale}
        data = {label: write_dataset(workdir / label, chips, max(1, chips // 60), client,
                                     f"results/{label}/chips", pool)
                for label, chips in sizes.items()}
        print("\n1. time to the first training batch (s), median of", args.repeats,
              "rounds, each measuring the four cases in an order that alternates (the load "
              "drifts)")
        times: dict[tuple[str, str], list[float]] = {}
        cases = [(label, kind) for label in data for kind in ("staged", "streamed")]
        for round_ in range(args.repeats):
            for label, kind in (cases if round_ % 2 == 0 else cases[::-1]):
                d = data[label]
                seconds = (first_batch_staged(d, server.endpoint, workdir, args.workers)
                           if kind == "staged" else
                           first_batch_streamed(d, server.endpoint, args.workers))
                times.setdefault((label, kind), []).append(seconds)
                time.sleep(SETTLE_S)  # the server's and the kernel's work for this case ends
        first = {key: sorted(values)[len(values) // 2] for key, values in times.items()}
        for label, d in data.items():
            staged, streamed = first[(label, "staged")], first[(label, "streamed")]
            print(f"   {label}: {len(d['images'])} train chips, {len(d['local'])} shard(s), "
                  f"{d['shard_bytes'] / 1e6:.1f} MB: staged {staged:.2f}, streamed "
                  f"{streamed:.2f}, streamed / staged {streamed / staged:.3f}")
        grow = {kind: first[("large", kind)] / first[("small", kind)]
                for kind in ("staged", "streamed")}
        print(f"   large / small ({args.scale} x the data): staged {grow['staged']:.2f} x, "
              f"streamed {grow['streamed']:.2f} x; load {os.getloadavg()[0]:.1f}")

        large = data["large"]
        print("\n2. bytes from S3 for one epoch of the training order")
        reader = ShardReader(large["remote"], endpoint=server.endpoint)
        dataset = ShardChips(large["coco"], large["remote"], augment=True, reader=reader)
        sampler = SeededBatches(len(dataset), BATCH, 0, augment=True)
        epoch = [b for _, b in zip(range(len(dataset) // BATCH), iter(sampler), strict=False)]
        used = sum(dataset.member(key[0])[3] for batch in epoch for key in batch)
        for _ in dataset.read_ahead(epoch):
            pass
        print(f"   fetched {reader.bytes_fetched / 1e6:.2f} MB in {reader.requests} requests; "
              f"the epoch's chips {used / 1e6:.2f} MB; ratio {reader.bytes_fetched / used:.4f} "
              f"(target <= 1.05); all shards {large['shard_bytes'] / 1e6:.2f} MB")

        print(f"\n3. chips per second through the train loader, alternating x{args.repeats}")
        rates: dict[str, list[float]] = {"local": [], "streamed": []}

        def measure(kind: str) -> None:
            shards = large["local"] if kind == "local" else large["remote"]
            reader = ShardReader(shards, endpoint=server.endpoint)
            rates[kind].append(chips_per_second(
                ShardChips(large["coco"], shards, augment=True, reader=reader), args.workers))

        for round_ in range(args.repeats):  # alternating which goes first: the load drifts
            for kind in (("local", "streamed") if round_ % 2 == 0 else ("streamed", "local")):
                measure(kind)
        ratios = sorted(s / loc for s, loc in zip(rates["streamed"], rates["local"], strict=True))
        print(f"   local disk {[round(r, 1) for r in rates['local']]} chips/s, streamed "
              f"{[round(r, 1) for r in rates['streamed']]}; streamed / local per round "
              f"{[round(r, 3) for r in ratios]} (sorted), median "
              f"{ratios[len(ratios) // 2]:.3f} (target >= 0.9); load {os.getloadavg()[0]:.1f}")
    finally:
        server.stop(grace=1.0)


if __name__ == "__main__":
    main()
