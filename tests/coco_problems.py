"""Random COCO detection problems with known structure, for engine cross-checks and bench/."""

from __future__ import annotations

import random

CATEGORIES = [{"id": 1, "name": "plane"}, {"id": 2, "name": "ship"},
              {"id": 3, "name": "container-crane"}]


def generated_set(images: int, seed: int, max_objects: int = 25,
                  max_false_positives: int = 8) -> tuple[dict, list[dict]]:
    """Ground truth and detections on 512 px images: objects of every COCO size range and
    three classes; 80 % of objects detected by a jittered box (some poor, 10 % with the wrong
    class), plus false positives, all with random scores."""
    rng = random.Random(seed)
    gt = {"images": [{"id": i, "width": 512, "height": 512, "file_name": f"{i}.jpg"}
                     for i in range(1, images + 1)],
          "categories": CATEGORIES, "annotations": []}
    detections = []
    for im in range(1, images + 1):
        for _ in range(rng.randint(0, max_objects)):
            w, h = rng.uniform(4, 150), rng.uniform(4, 150)
            box = [rng.uniform(0, 512 - w), rng.uniform(0, 512 - h), w, h]
            cat = rng.choice([1, 1, 2, 3])
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": im,
                                      "category_id": cat, "bbox": box, "area": w * h,
                                      "iscrowd": 0})
            if rng.random() < 0.8:
                jitter = rng.uniform(0, 0.4)
                detections.append({
                    "image_id": im, "category_id": cat if rng.random() < 0.9 else 2,
                    "bbox": [box[0] + rng.uniform(-jitter, jitter) * w,
                             box[1] + rng.uniform(-jitter, jitter) * h,
                             w * rng.uniform(1 - jitter, 1 + jitter),
                             h * rng.uniform(1 - jitter, 1 + jitter)],
                    "score": round(rng.random(), 4)})
        for _ in range(rng.randint(0, max_false_positives)):
            w, h = rng.uniform(4, 100), rng.uniform(4, 100)
            detections.append({"image_id": im, "category_id": rng.choice([1, 2, 3]),
                               "bbox": [rng.uniform(0, 400), rng.uniform(0, 400), w, h],
                               "score": round(rng.random(), 4)})
    return gt, detections
