"""Chips for training and prediction, read straight out of the tar shards (never unpacked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from nadir.core.geometry import rbox_to_polygon
from nadir.raster.band_stats import InputScaling
from nadir.storage.shards import decode_chip, member_offsets, read_member


class ShardChips(torch.utils.data.Dataset):
    """The images of one COCO split, with their boxes, read from the shards by byte offset.

    Each item is (CHW float tensor, the chip's values scaled by `scaling`: value / 255 for
    8-bit chips; see `nadir.raster.band_stats.InputScaling`), target dict with `boxes` in
    xyxy pixels, `labels` as model labels 1..K (see `category_labels`), `quads` (the 4
    corners of each oriented box, see `corners_of`), `image_id`). With `augment`, the flip or
    90-degree rotation chosen by the sampler is applied: overhead imagery has no preferred
    orientation.
    """

    def __init__(self, coco_json: Path, shards: list[Path], augment: bool = False,
                 scaling: InputScaling | None = None):
        self.coco_json = Path(coco_json)
        coco = json.loads(self.coco_json.read_text())
        self.images = coco["images"]
        self.categories = coco["categories"]
        self.label_of = category_labels(self.categories)
        self.shards = [str(s) for s in shards]
        boxes: dict[int, list] = {im["id"]: [] for im in self.images}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            if w > 0 and h > 0:
                boxes[ann["image_id"]].append((x, y, x + w, y + h,
                                               self.label_of[ann["category_id"]],
                                               *corners_of(ann)))
        self.boxes = boxes
        self.offsets = member_offsets(
            [Path(s) for s in self.shards],
            {(im["shard"], im["file_name"]) for im in self.images}, self.coco_json)
        self.augment = augment
        self.scaling = scaling or InputScaling((0.0,), (255.0,))  # 8-bit: value / 255

    def __len__(self) -> int:
        return len(self.images)

    def read_image(self, index: int) -> np.ndarray:
        im = self.images[index]
        shard = self.shards[im["shard"]]
        data = read_member(shard, *self.offsets[(im["shard"], im["file_name"])])
        return decode_chip(data, f"{shard}: chip {im['file_name']}")

    def __getitem__(self, key: int | tuple[int, int]):
        """`key` is an index, or (index, symmetry code 0..7) as `SeededBatches` yields them."""
        index, code = key if isinstance(key, tuple) else (key, 0)
        array = self.read_image(index)
        # 8-bit chips stay bytes until scaled; others (16-bit, float) become float32 first.
        array = array.copy() if array.dtype == np.uint8 else array.astype(np.float32)
        pixels = torch.from_numpy(array).permute(2, 0, 1)
        rows = self.boxes[self.images[index]["id"]]
        boxes = torch.tensor([r[:4] for r in rows], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([r[4] for r in rows], dtype=torch.int64)
        quads = torch.tensor([r[5:] for r in rows], dtype=torch.float32).reshape(-1, 8)
        if self.augment and code:
            quads = flip_rotate_points(quads, code, pixels.shape[2], pixels.shape[1])
            pixels, boxes = random_flip_rotate(pixels, boxes, code)
        target = {"boxes": boxes, "labels": labels, "quads": quads,
                  "image_id": self.images[index]["id"]}
        return self.scaling.apply(pixels.float()), target


def category_labels(categories: list[dict]) -> dict[int, int]:
    """Model label (1..K, 0 is background) of each COCO category id, in id order.

    Datasets may number categories with gaps (xView's ids run 11..94); models need 1..K.
    """
    return {cid: label for label, cid in enumerate(sorted(c["id"] for c in categories), 1)}


class SeededBatches(torch.utils.data.Sampler):
    """Endless batches of (index, symmetry code) for one process, from step `start_step` on.

    Sample k of the run (counted over every process) is item perm_e[k mod n] of epoch
    e = k div n, where perm_e and the augmentation codes come from a generator seeded with
    (seed, e) alone. A run resumed at any step, or split over any number of processes, therefore
    sees exactly the batches an uninterrupted run sees, whatever the loader's worker count.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1, augment: bool = False):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.augment = augment
        self._epoch: tuple[int, list[int], list[int]] | None = None

    def _sample(self, k: int) -> tuple[int, int]:
        epoch, position = divmod(k, self.size)
        if self._epoch is None or self._epoch[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
            codes = torch.randint(0, 8, (self.size,), generator=generator).tolist()
            self._epoch = (epoch, order, codes)
        _, order, codes = self._epoch
        return order[position], codes[position] if self.augment else 0

    def __iter__(self):
        step = self.start_step
        per_step = self.batch_size * self.world_size
        while True:
            first = step * per_step + self.rank * self.batch_size
            yield [self._sample(k) for k in range(first, first + self.batch_size)]
            step += 1


def random_flip_rotate(pixels: torch.Tensor, boxes: torch.Tensor, code: int):
    """Apply one of the 8 symmetries of the square (code 0..7) to a CHW image and xyxy boxes."""
    _, h, w = pixels.shape
    if code & 1:  # horizontal flip
        pixels = pixels.flip(2)
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    if code & 2:  # vertical flip
        pixels = pixels.flip(1)
        boxes = torch.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1)
    if code & 4:  # transpose (swap x and y)
        pixels = pixels.transpose(1, 2)
        boxes = boxes[:, [1, 0, 3, 2]]
    return pixels.contiguous(), boxes


def corners_of(annotation: dict) -> list[float]:
    """The 4 corners of an annotation's oriented box (`rbox`); its `bbox` corners in COCO
    files written before `rbox` existed."""
    if "rbox" in annotation:
        return rbox_to_polygon(annotation["rbox"])
    x, y, w, h = annotation["bbox"]
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def flip_rotate_points(points: torch.Tensor, code: int, width: int, height: int) -> torch.Tensor:
    """`random_flip_rotate`'s symmetry (code 0..7) applied to rows of flat x, y coordinates."""
    xs, ys = points[:, 0::2], points[:, 1::2]
    if code & 1:
        xs = width - xs
    if code & 2:
        ys = height - ys
    if code & 4:
        xs, ys = ys, xs
    return torch.stack([xs, ys], 2).reshape(points.shape)


def model_targets(model: torch.nn.Module, targets: tuple[dict, ...],
                  device: torch.device) -> list[dict]:
    """The target fields a model trains on, on its device: `boxes` and `labels`, plus those it
    names in `target_keys` (the oriented model: `quads`); `model` may be wrapped in DDP."""
    keys = ("boxes", "labels", *getattr(getattr(model, "module", model), "target_keys", ()))
    return [{key: t[key].to(device) for key in keys} for t in targets]


def collate(batch):
    return tuple(zip(*batch, strict=True))
