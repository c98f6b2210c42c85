"""COCO box evaluation time: faster-coco-eval (nadir's engine) against pycocotools.

Both engines run nadir's own evaluation (`nadir.evaluate.chips.coco_evaluation`: matching,
accumulation, the twelve numbers, per-class AP and PR curves) on the same generated problem, in
one process, so the ratio compares like with like. Prints the best of `--repeats` timings per
engine, the ratio, and the largest difference between their numbers.

    python bench/coco_eval.py [--images 1000] [--max-detections 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from coco_problems import generated_set  # noqa: E402

from nadir.evaluate.chips import coco_evaluation  # noqa: E402


def best_time(engine: str, gt: dict, detections: list[dict], max_detections: int,
              repeats: int) -> tuple[float, dict]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = coco_evaluation(gt, detections, max_detections, engine)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--max-objects", type=int, default=60,
                        help="objects per image are drawn from 0..this")
    parser.add_argument("--max-detections", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gt, detections = generated_set(args.images, seed=0, max_objects=args.max_objects,
                                   max_false_positives=args.max_objects // 3)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} objects, "
          f"{len(detections)} detections ({len(detections) / len(gt['images']):.1f} per "
          f"image), max_detections {args.max_detections}, best of {args.repeats}")
    fast, fast_result = best_time("faster-coco-eval", gt, detections, args.max_detections,
                                  args.repeats)
    slow, slow_result = best_time("pycocotools", gt, detections, args.max_detections,
                                  args.repeats)
    difference = max(abs(fast_result["metrics"][k] - slow_result["metrics"][k])
                     for k in fast_result["metrics"])
    print(f"pycocotools       {slow:7.2f} s")
    print(f"faster-coco-eval  {fast:7.2f} s")
    print(f"speed-up          {slow / fast:7.1f} x")
    print(f"largest difference of the 12 COCO numbers: {difference:.1e} "
          f"(AP {fast_result['metrics']['AP']:.4f})")


if __name__ == "__main__":
    main()
