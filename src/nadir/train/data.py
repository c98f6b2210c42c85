"""Chips for training and prediction, read straight out of the tar shards (never unpacked)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nadir.core.geometry import rbox_to_polygon
from nadir.raster.band_stats import InputScaling
from nadir.storage.shards import ShardReader, cache_from_environment, chip_ranges, decode_chip

# Batches read ahead of the loader from S3 shards (on the reader's threads): a few steps of
# slack for S3's latency, a bounded amount of memory (depth x batch x chip size).
READ_AHEAD_BATCHES = 8


def keys_read_ahead(reader: ShardReader, member: Callable[[int], tuple[int, str, int, int]],
                    batches: Iterable[list]) -> Iterator[list]:
    """Batches of keys (index, code) as (index, code, chip bytes), the next
    READ_AHEAD_BATCHES fetched meanwhile, when the shards are on S3; local shards' batches as
    they are (each loader process reads its own chips). `member` gives an index's (shard,
    name, offset, size): how `ShardChips` and detectron2's `RegisteredChips` read ahead."""
    if not reader.remote:
        yield from batches
        return
    for batch, chips in reader.read_ahead(
            batches, lambda keys: [member(key[0]) for key in keys], READ_AHEAD_BATCHES):
        yield [(*key, data) for key, data in zip(batch, chips, strict=True)]


class ShardChips(torch.utils.data.Dataset):
    """The images of one COCO split, with their boxes, read from the shards by byte offset.

    Each item is (CHW tensor of the chip's values as stored: uint8 for 8-bit chips, float32
    for others; `model_inputs` scales them by `scaling` on the model's device, value / 255 for
    8-bit chips, see `nadir.raster.band_stats.InputScaling`), target dict with `boxes` in
    xyxy pixels, `labels` as model labels 1..K (see `category_labels`), `quads` (the 4
    corners of each oriented box, see `corners_of`), `image_id`). With `augment`, the flip or
    90-degree rotation chosen by the sampler is applied: overhead imagery has no preferred
    orientation.

    Shards are local files or s3:// objects (`nadir.storage.shards.ShardReader`); keys from
    `read_ahead` carry their chip's bytes, fetched ahead on the reader's threads.
    """

    def __init__(self, coco_json: Path, shards: list[str | Path], augment: bool = False,
                 reader: ShardReader | None = None, scaling: InputScaling | None = None):
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
        self.ranges = chip_ranges(self.shards, self.images, self.coco_json)
        self.reader = reader or ShardReader(self.shards, cache_from_environment())
        self.augment = augment
        self.scaling = scaling or InputScaling((0.0,), (255.0,))  # 8-bit: value / 255

    def __len__(self) -> int:
        return len(self.images)

    def member(self, index: int) -> tuple[int, str, int, int]:
        """(shard index, member name, offset, size) of an image's chip."""
        im = self.images[index]
        return (im["shard"], im["file_name"], *self.ranges[(im["shard"], im["file_name"])])

    def read_image(self, index: int, data: bytes | None = None) -> np.ndarray:
        """An image's pixels, decoded from `data` when its bytes were read ahead."""
        im = self.images[index]
        if data is None:
            data = self.reader.read([self.member(index)])[0]
        return decode_chip(data, f"{self.shards[im['shard']]}: chip {im['file_name']}")

    def read_ahead(self, batches: Iterable[list]) -> Iterator[list]:
        """Batches of keys with their chips' bytes fetched ahead (`keys_read_ahead`)."""
        return keys_read_ahead(self.reader, self.member, batches)

    def in_order(self, batch: int) -> Iterator[list[tuple]]:
        """Every item in index order, `batch` at a time, read ahead (prediction, scoring)."""
        order = [[(i, 0) for i in range(first, min(first + batch, len(self)))]
                 for first in range(0, len(self), batch)]
        for keys in self.read_ahead(order):
            yield [self[key] for key in keys]

    def __getitem__(self, key: int | tuple):
        """`key` is an index, or (index, symmetry code 0..7) as `SeededBatches` yields them,
        with the chip's bytes as a third element when `read_ahead` fetched them."""
        index, code, data = (*key, None)[:3] if isinstance(key, tuple) else (key, 0, None)
        array = self.read_image(index, data)
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
        return pixels, target

    def model_inputs(self, images: Iterable[torch.Tensor], device: torch.device) -> list:
        """Items' images as the model takes them: moved to `device` as stored (a quarter of
        the bytes of float32 for 8-bit chips, in the decoder's pixel order), then laid out CHW,
        converted and scaled there, so loader processes spend no CPU on it and pass no floats
        to the training process (bench/loader_cost.py). From pinned memory the copy runs
        while the step before still computes (`non_blocking`)."""
        return [self.scaling.apply(image.to(device, non_blocking=True).contiguous().float())
                for image in images]


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


def collate(batch):
    return tuple(zip(*batch, strict=True))


class LoaderBatches(torch.utils.data.IterableDataset):
    """Collated batches of `dataset` in `sampler`'s order, made in the loader's processes.

    Worker w of W makes batches w, w + W, ... of the sampler, reading their chips ahead
    (`dataset.read_ahead`), decoding, augmenting and collating them (`collate_items`: the
    loop's `collate`; detectron2's adapter keeps its list of dicts); the DataLoader takes one
    from each worker in turn, so the batches arrive in the sampler's order whatever W is.
    The training process itself only receives batches: no S3 request competes for its
    interpreter with the thread that drives the GPU. `dataset` is a `ShardChips` or anything
    with its `read_ahead` and keyed items (`nadir.train.detectron2.RegisteredChips`).
    """

    def __init__(self, dataset: ShardChips, sampler: SeededBatches,
                 collate_items: Callable[[list], Any] = collate):
        super().__init__()
        self.dataset, self.sampler, self.collate_items = dataset, sampler, collate_items

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = itertools.islice(iter(self.sampler), worker, None, workers)
        for keys in self.dataset.read_ahead(mine):
            yield self.collate_items([self.dataset[key] for key in keys])


def as_made(batch):
    """The DataLoader's collate_fn for `LoaderBatches`: its batches come collated."""
    return batch


def random_flip_rotate(pixels: torch.Tensor, boxes: torch.Tensor, code: int):
    """Apply one of the 8 symmetries of the square (code 0..7) to a CHW image and xyxy boxes.

    The image comes back as a view or a flipped copy in its input's memory layout: laying it
    out CHW (`contiguous`) costs more than the flips, and is done where the image is converted
    to float (`ShardChips.model_inputs`, on the model's device)."""
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
    return pixels, boxes


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

