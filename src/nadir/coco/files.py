"""The COCO stage: shard chip lists to one COCO JSON per split, plus dataset statistics."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from nadir.core.errors import InputError, NadirError
from nadir.core.geometry import polygon_area, rbox_from_polygon
from nadir.datasets.splits import seeded_split
from nadir.storage.shards import read_chip_list

log = logging.getLogger(__name__)


def build_coco(shard_jsons: list[Path], categories: list[dict], splits: list[str]) -> dict:
    """Return {split: COCO dict}. Image ids follow shard then chip order, so they are stable.

    Each image carries `shard` (index into the shard list), `offset` and `size` (its bytes in
    the shard, where the chip list records them), `scene`, `x`, `y` and `transform`, which the
    trainer uses to find the chip and the evaluator to map boxes back to the scene.
    Each annotation carries, beside `bbox`, its oriented box `rbox` ([cx, cy, w, h, angle in
    degrees], the minimum-area rectangle of its `segmentation`; see `nadir.core.geometry`).
    """
    by_name = {c["name"]: c["id"] for c in categories}
    out = {s: {"images": [], "annotations": [], "categories": categories} for s in splits}
    image_id = ann_id = 0
    for shard_index, path in enumerate(shard_jsons):
        for chip in read_chip_list(path)["chips"]:
            if chip["split"] not in out:
                continue
            image_id += 1
            coco = out[chip["split"]]
            coco["images"].append({
                "id": image_id, "file_name": chip["file"], "width": chip["width"],
                "height": chip["height"], "shard": shard_index, "scene": chip["scene"],
                "x": chip["x"], "y": chip["y"], "transform": chip["transform"],
                **({"offset": chip["offset"], "size": chip["size"]} if "offset" in chip else {}),
            })
            for obj in chip["objects"]:
                ann_id += 1
                coco["annotations"].append({
                    "id": ann_id, "image_id": image_id, "category_id": by_name[obj["category"]],
                    "bbox": obj["bbox"], "rbox": rbox_from_polygon(obj["polygons"]),
                    "area": round(sum(map(polygon_area, obj["polygons"])), 2),
                    "segmentation": obj["polygons"], "iscrowd": 0,
                    "truncated": int(obj["truncated"]), "difficult": obj["difficult"],
                })
    return out


def statistics(coco_by_split: dict[str, dict]) -> dict:
    """Objects per class, chips and objects per chip, box sizes, per split."""
    stats = {}
    for split, coco in coco_by_split.items():
        names = {c["id"]: c["name"] for c in coco["categories"]}
        per_class = Counter(names[a["category_id"]] for a in coco["annotations"])
        per_image = Counter(a["image_id"] for a in coco["annotations"])
        sides = sorted(max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"])
        stats[split] = {
            "chips": len(coco["images"]),
            "objects": len(coco["annotations"]),
            "empty_chips": sum(1 for im in coco["images"] if im["id"] not in per_image),
            "objects_per_class": {n: per_class.get(n, 0) for n in names.values()},
            "max_objects_per_chip": max(per_image.values(), default=0),
            "box_side_px_median": sides[len(sides) // 2] if sides else None,
        }
    return stats


def write_coco(shard_jsons: list[Path], categories_json: Path, outputs: dict[str, Path],
               stats_path: Path) -> dict:
    """The coco job: one COCO file per split of `outputs` from the chip lists, and their
    statistics; returns the statistics."""
    categories = json.loads(Path(categories_json).read_text())
    coco = build_coco(shard_jsons, categories, list(outputs))
    for split, data in coco.items():
        if not data["images"]:
            raise NadirError(
                f"no chip of the {split} split was written, so nothing could be trained or "
                f"evaluated on it: check that {split} has scenes (the dataset's `split` "
                "settings and source entries), and that chips are not all skipped "
                "(chipping.empty_keep, chipping.nodata_max)")
    for split, path in outputs.items():
        Path(path).write_text(json.dumps(coco[split]) + "\n")
    stats = statistics(coco)
    Path(stats_path).write_text(json.dumps(stats, indent=1) + "\n")
    for split, s in stats.items():
        log.info("%s: %d chips, %d objects %s", split, s["chips"], s["objects"],
                 s["objects_per_class"])
    return stats


def carve_selection(train: dict, fraction: float, seed: int,
                    source: str | Path = "train split") -> tuple[dict, dict]:
    """Split a train COCO split by scene into (fit, selection), seeded.

    The split that picks a model's best checkpoint must not be the one it is scored on; where
    a dataset has only train and val (DOTA's test labels are not public, so its val is the test
    split), the selection scenes come out of train. Image and object ids are kept, so each
    chip keeps its shard and name.
    """
    scenes = sorted({im["scene"] for im in train["images"]})
    if len(scenes) < 2:
        raise InputError(source, f"{len(scenes)} train scene(s): a selection split needs at "
                         "least 2, so that both parts keep one")
    chosen = {s for s, part in seeded_split(scenes, fraction, seed).items() if part == "val"}

    def part(selected: bool) -> dict:
        images = [im for im in train["images"] if (im["scene"] in chosen) == selected]
        ids = {im["id"] for im in images}
        return {**train, "images": images,
                "annotations": [a for a in train["annotations"] if a["image_id"] in ids]}

    return part(False), part(True)


def write_selection_split(train: str | Path, fraction: float, seed: int, fit: str | Path,
                          selection: str | Path) -> dict:
    """The carve_selection job: the train COCO file split by scene into `fit` (trained on)
    and `selection` (scored while training), seeded; returns the selection split."""
    fit_split, selection_split = carve_selection(json.loads(Path(train).read_text()), fraction,
                                                 seed, train)
    Path(fit).write_text(json.dumps(fit_split) + "\n")
    Path(selection).write_text(json.dumps(selection_split) + "\n")
    log.info("selection split: %d chips of %d train scenes held out (fraction %s, seed %d); "
             "%d chips left to train on", len(selection_split["images"]),
             len({im["scene"] for im in selection_split["images"]}), fraction, seed,
             len(fit_split["images"]))
    return selection_split
