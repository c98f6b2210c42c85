"""What `training.eval_every` costs the training loop: COCO scoring of the selection split
inside the loop (before) against handing the detections to the scoring process (now).

A realistic selection split: `--chips` 512 px chips with `--detections` detections each (a
detector at a low score threshold fills its `max_detections`), objects of all COCO sizes
(`tests/coco_problems.py`). Prints, best of `--repeats`:
  - in the loop: `coco_evaluation` run by the training process (the GPU waits this long);
  - handed over: the training process's own time to hand the detections to the spawned
    scoring process (`submit`), and the pickling of the payload (done by the executor's
    feeder thread, an upper bound on the training process's CPU time), with the time the score
    takes to arrive (the loop trains meanwhile);
and the ratio of the loop's time before to after. The scoring process's start (spawn and
imports, once per run, overlapping training) is printed too.

    python bench/selection_scoring.py [--chips 500] [--detections 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from coco_problems import generated_set  # noqa: E402

from nadir.protocols.coco import coco_evaluation  # noqa: E402


def selection_problem(chips: int, per_chip: int) -> tuple[dict, list[dict]]:
    """Ground truth and exactly `per_chip` detections on each chip (false positives added,
    the lowest-scored dropped beyond `per_chip`)."""
    gt, found = generated_set(chips, seed=0, max_objects=40, max_false_positives=10)
    rng = random.Random(1)
    by_chip: dict[int, list] = {im["id"]: [] for im in gt["images"]}
    for det in found:
        by_chip[det["image_id"]].append(det)
    detections = []
    for chip, dets in by_chip.items():
        while len(dets) < per_chip:
            w, h = rng.uniform(4, 100), rng.uniform(4, 100)
            dets.append({"image_id": chip, "category_id": rng.choice([1, 2, 3]),
                         "bbox": [rng.uniform(0, 400), rng.uniform(0, 400), w, h],
                         "score": round(rng.random() * 0.3, 4)})
        detections += sorted(dets, key=lambda d: -d["score"])[:per_chip]
    return gt, detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=500)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gt, detections = selection_problem(args.chips, args.detections)
    print(f"{len(gt['images'])} chips, {len(gt['annotations'])} objects, {len(detections)} "
          f"detections, max_detections {args.detections}, best of {args.repeats}")

    in_loop = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        coco_evaluation(gt, detections, args.detections, source="the selection split")
        in_loop.append(time.perf_counter() - start)

    start = time.perf_counter()
    worker = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"))
    worker.submit(int).result()
    started = time.perf_counter() - start
    handing, pickling, arriving = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        pickle.dumps((coco_evaluation, gt, detections, args.detections), protocol=5)
        pickling.append(time.perf_counter() - start)
        start = time.perf_counter()
        future = worker.submit(coco_evaluation, gt, detections, args.detections,
                               source="the selection split")
        handing.append(time.perf_counter() - start)
        future.result()
        arriving.append(time.perf_counter() - start)
    worker.shutdown()
    before, after = min(in_loop), min(handing) + min(pickling)
    print(f"in the loop (before)        {before:8.3f} s  the GPU waits")
    print(f"handed over: submit         {min(handing):8.4f} s")
    print(f"             pickling       {min(pickling):8.4f} s  (feeder thread; upper bound)")
    print(f"             score arrives  {min(arriving):8.3f} s  later (training goes on)")
    print(f"scoring process start       {started:8.3f} s  once per run, beside training")
    print(f"loop time before / after    {before / after:8.1f} x")


if __name__ == "__main__":
    main()
