"""Chips for training and prediction, read straight out of the tar shards (never unpacked)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class ShardChips(torch.utils.data.Dataset):
    """The images of one COCO split, with their boxes, read from the shards by byte offset.

    Each item is (CHW float tensor in [0, 1], target dict with `boxes` in xyxy pixels, `labels`
    as COCO category ids, `image_id`). With `augment`, random flips and 90-degree rotations are
    applied: overhead imagery has no preferred orientation.
    """

    def __init__(self, coco_json: Path, shards: list[Path], augment: bool = False, seed: int = 0):
        coco = json.loads(Path(coco_json).read_text())
        self.images = coco["images"]
        self.categories = coco["categories"]
        self.shards = [str(s) for s in shards]
        boxes: dict[int, list] = {im["id"]: [] for im in self.images}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            if w > 0 and h > 0:
                boxes[ann["image_id"]].append((x, y, x + w, y + h, ann["category_id"]))
        self.boxes = boxes
        self.offsets = self._member_offsets()
        self.augment = augment
        self.seed = seed

    def _member_offsets(self) -> dict[tuple[int, str], tuple[int, int]]:
        wanted = {(im["shard"], im["file_name"]) for im in self.images}
        offsets = {}
        for index, shard in enumerate(self.shards):
            with tarfile.open(shard) as tar:
                for member in tar:
                    if (index, member.name) in wanted:
                        offsets[(index, member.name)] = (member.offset_data, member.size)
        missing = wanted - offsets.keys()
        if missing:
            shard, name = sorted(missing)[0]
            raise FileNotFoundError(
                f"{len(missing)} chip(s) listed in the COCO file are not in the shards, e.g. "
                f"{name} in shard {shard} ({self.shards[shard]}); rerun the chip stage"
            )
        return offsets

    def __len__(self) -> int:
        return len(self.images)

    def read_image(self, index: int) -> np.ndarray:
        im = self.images[index]
        offset, size = self.offsets[(im["shard"], im["file_name"])]
        with open(self.shards[im["shard"]], "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def __getitem__(self, index: int):
        pixels = torch.from_numpy(self.read_image(index).copy()).permute(2, 0, 1)
        rows = self.boxes[self.images[index]["id"]]
        boxes = torch.tensor([r[:4] for r in rows], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([r[4] for r in rows], dtype=torch.int64)
        if self.augment:
            pixels, boxes = random_flip_rotate(pixels, boxes, torch.randint(0, 8, ()).item())
        target = {"boxes": boxes, "labels": labels, "image_id": self.images[index]["id"]}
        return pixels.float() / 255.0, target


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


def collate(batch):
    return tuple(zip(*batch, strict=True))
