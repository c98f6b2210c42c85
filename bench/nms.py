"""Benchmark: the scene merge's NMS (`nadir.core.geometry.box_nms`, no torch) against
torchvision's `batched_nms`, in the same process, on detections as a large scene gives them.

    python bench/nms.py                      # 20,000 and 200,000 boxes
    python bench/nms.py --boxes 1000000 --classes 60

Boxes: objects spread over a 20,000 px scene, four jittered detections of each (overlapping
windows see an object more than once), 10 to 80 px, 2-decimal coordinates, uniform scores,
classes drawn at random; IoU threshold 0.3 (evaluation.scene_nms_iou's default). Prints both
times, their ratio, and whether both kept the same boxes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nadir.core.geometry import box_nms  # noqa: E402


def detections(count: int, classes: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    objects = rng.uniform(0, 20_000, (count // 4, 2))
    corners = np.repeat(objects, 4, axis=0) + rng.normal(0, 3, (len(objects) * 4, 2))
    sizes = rng.uniform(10, 80, corners.shape)
    boxes = np.round(np.hstack([corners, corners + sizes]), 2)
    return boxes, rng.uniform(0.05, 1.0, len(boxes)), rng.integers(0, classes, len(boxes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--iou", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch
    from torchvision.ops import batched_nms

    for count in args.boxes:
        boxes, scores, groups = detections(count, args.classes, args.seed)
        started = time.perf_counter()
        ours = box_nms(boxes, scores, groups, args.iou)
        nadir_s = time.perf_counter() - started
        started = time.perf_counter()
        reference = batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(groups),
                                args.iou)
        torch_s = time.perf_counter() - started
        print(f"{len(boxes):>9,} boxes, {args.classes} classes: box_nms {nadir_s:.2f} s, "
              f"batched_nms {torch_s:.2f} s ({torch_s / nadir_s:.2f} x); same boxes kept: "
              f"{ours == sorted(reference.tolist())} ({len(ours):,})", flush=True)


if __name__ == "__main__":
    main()
