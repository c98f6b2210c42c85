"""The chip stage: cut scenes into fixed-size chips with GDAL windowed reads, pack them in shards.

Rules (documented in config/README.md and tested in tests/test_chipping.py):
- Windows step by `size - overlap`; the last row and column are shifted back to end at the
  image edge, so no chip hangs over it. A scene smaller than a chip gives one chip at (0, 0),
  padded to full size with `pad_value`.
- Scenes are read one strip of `size` rows at a time, in order (GDAL decodes PNG row by row), so
  memory grows with the scene's width, never with its area.
- An object cut by a chip border is clipped to the chip; it is kept when at least `min_visible`
  of its area is inside, and marked truncated when any of it is outside. Its box is the bounds of
  the clipped polygon. Fragments below the threshold are dropped and counted.
- Chips with no objects are kept at rate `empty_keep`, decided by a hash of (seed, scene,
  window), so the same config always keeps the same chips. Chips whose nodata fraction exceeds
  `nodata_max` are skipped and counted.
- Non-8-bit input is stretched to 8 bits per band between per-scene percentiles computed on a
  decimated read; `bands` selects and orders the bands (1-based).
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from shapely.geometry import Polygon, box
from shapely.validation import make_valid

from nadir import __version__
from nadir.errors import InputError
from nadir.index import Annotation

log = logging.getLogger(__name__)

EPS = 1e-9
STRETCH_SAMPLE_PX = 1024  # the longest side of the decimated read used for percentiles


@dataclass(frozen=True)
class ChipParams:
    size: int = 256
    overlap: int = 32
    min_visible: float = 0.7
    empty_keep: float = 0.1
    nodata_max: float = 0.5
    pad_value: int = 0
    bands: tuple[int, ...] | None = None
    stretch_percentiles: tuple[float, float] = (2.0, 98.0)
    image_format: str = "jpeg"
    jpeg_quality: int = 90
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.overlap < self.size:
            raise ValueError(f"chip overlap must be in [0, size); got {self.overlap}, {self.size}")

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg", "png": "png"}[self.image_format]


@dataclass
class SceneCounts:
    chips_written: int = 0
    empty_kept: int = 0
    empty_skipped: int = 0
    nodata_skipped: int = 0
    objects_kept: int = 0
    objects_truncated: int = 0
    fragments_dropped: int = 0
    objects_in_no_chip: int = 0


@dataclass
class ChipRecord:
    file: str
    scene: str
    split: str
    x: int
    y: int
    width: int
    height: int
    transform: list[float]
    objects: list[dict] = field(default_factory=list)


def window_offsets(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets along one axis: a fixed stride, the last window flush with the edge."""
    if length <= size:
        return [0]
    stride = size - overlap
    offsets = list(range(0, length - size, stride))
    offsets.append(length - size)
    return offsets


def clip_objects(annotations: list[Annotation], x0: int, y0: int, size: int,
                 min_visible: float) -> tuple[list[dict], int, set[int]]:
    """Clip scene objects to one chip window; returns (kept objects, dropped count, kept ids)."""
    window = box(x0, y0, x0 + size, y0 + size)
    kept, dropped, kept_ids = [], 0, set()
    for ann in annotations:
        xs, ys = ann.polygon[0::2], ann.polygon[1::2]
        if max(xs) <= x0 or min(xs) >= x0 + size or max(ys) <= y0 or min(ys) >= y0 + size:
            continue
        shape = Polygon(list(zip(xs, ys, strict=True)))
        if not shape.is_valid:
            shape = make_valid(shape)
        if shape.area <= 0:
            continue
        part = shape.intersection(window)
        visible = part.area / shape.area
        if visible <= 0:
            continue
        if visible + EPS < min_visible:
            dropped += 1
            continue
        polygons = [g for g in getattr(part, "geoms", [part]) if g.geom_type == "Polygon"]
        minx, miny, maxx, maxy = part.bounds
        kept.append({
            "object": ann.object,
            "category": ann.category,
            "difficult": ann.difficult,
            "truncated": visible < 1 - 1e-6,
            "visible": round(visible, 6),
            "bbox": [round(minx - x0, 2), round(miny - y0, 2),
                     round(maxx - minx, 2), round(maxy - miny, 2)],
            "polygons": [[round(v - (x0 if i % 2 == 0 else y0), 2)
                          for xy in p.exterior.coords[:-1] for i, v in enumerate(xy)]
                         for p in polygons],
        })
        kept_ids.add(ann.object)
    return kept, dropped, kept_ids


def keep_empty(seed: int, scene: str, x0: int, y0: int, rate: float) -> bool:
    """A reproducible coin flip per window (string seeds hash identically across runs)."""
    return random.Random(f"{seed}:{scene}:{x0}:{y0}").random() < rate


class Radiometry:
    """Selects bands and maps a scene's pixel values to 8 bits."""

    def __init__(self, src, params: ChipParams):
        bands = params.bands or tuple(range(1, min(src.count, 3) + 1))
        for b in bands:
            if not 1 <= b <= src.count:
                raise InputError(src.name, f"band {b} requested, the image has {src.count} band(s)")
        self.bands = list(bands)
        self.scale: tuple[np.ndarray, np.ndarray] | None = None
        if src.dtypes[0] != "uint8":
            self.scale = self._percentiles(src, params.stretch_percentiles)

    def _percentiles(self, src, percentiles: tuple[float, float]):
        factor = max(1, int(np.ceil(max(src.width, src.height) / STRETCH_SAMPLE_PX)))
        shape = (len(self.bands), max(1, src.height // factor), max(1, src.width // factor))
        sample = src.read(self.bands, out_shape=shape, masked=True).astype("float64")
        lows, highs = [], []
        for band in sample:
            values = band.compressed()
            lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
            lows.append(lo)
            highs.append(hi if hi > lo else lo + 1)
        return np.array(lows)[:, None, None], np.array(highs)[:, None, None]

    def to_8bit(self, pixels: np.ndarray) -> np.ndarray:
        if self.scale is None:
            return pixels
        lo, hi = self.scale
        return np.clip((pixels - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def encode(chip: np.ndarray, params: ChipParams) -> bytes:
    """Encode a (bands, h, w) uint8 array; one band is written as grey, three as RGB."""
    pixels = chip[0] if chip.shape[0] == 1 else np.ascontiguousarray(chip.transpose(1, 2, 0))
    buffer = io.BytesIO()
    if params.image_format == "jpeg":
        Image.fromarray(pixels).save(buffer, "JPEG", quality=params.jpeg_quality)
    else:
        Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def chip_scene(src, scene: dict, annotations: list[Annotation], params: ChipParams,
               pool: ThreadPoolExecutor) -> Iterator[tuple[ChipRecord, object]]:
    """Cut one open raster into chips; yields (record, future of encoded bytes) in order."""
    from rasterio.windows import Window

    counts = scene["counts"]
    radiometry = Radiometry(src, params)
    size = params.size
    seen_objects: set[int] = set()
    xs = window_offsets(src.width, size, params.overlap)
    for y0 in window_offsets(src.height, size, params.overlap):
        rows = min(size, src.height - y0)
        window = Window(0, y0, src.width, rows)
        strip = radiometry.to_8bit(src.read(radiometry.bands, window=window))
        valid = src.dataset_mask(window=window) > 0
        for x0 in xs:
            cols = min(size, src.width - x0)
            chip_valid = valid[:, x0:x0 + cols]
            if 1.0 - chip_valid.mean() > params.nodata_max:
                counts.nodata_skipped += 1
                continue
            objects, dropped, kept_ids = clip_objects(annotations, x0, y0, size,
                                                      params.min_visible)
            counts.fragments_dropped += dropped
            if not objects:
                if not keep_empty(params.seed, scene["scene"], x0, y0, params.empty_keep):
                    counts.empty_skipped += 1
                    continue
                counts.empty_kept += 1
            seen_objects |= kept_ids
            counts.objects_kept += len(objects)
            counts.objects_truncated += sum(o["truncated"] for o in objects)
            chip = np.full((strip.shape[0], size, size), params.pad_value, dtype=np.uint8)
            chip[:, :rows, :cols] = strip[:, :, x0:x0 + cols]
            chip[:, :rows, :cols][:, ~chip_valid] = params.pad_value
            t = src.window_transform(Window(x0, y0, size, size))
            record = ChipRecord(
                file=f"{scene['scene']}_{x0}_{y0}.{params.extension}", scene=scene["scene"],
                split=scene["split"], x=x0, y=y0, width=size, height=size,
                transform=[t.c, t.a, t.b, t.f, t.d, t.e], objects=objects,
            )
            counts.chips_written += 1
            yield record, pool.submit(encode, chip, params)
    counts.objects_in_no_chip = len({a.object for a in annotations} - seen_objects)


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info


def chip_shard(scenes: list[dict], annotations: dict[str, list[Annotation]],
               images: dict[str, Path], params: ChipParams, tar_path: Path, json_path: Path,
               threads: int = 1) -> dict:
    """Chip the given scenes into one tar shard and its JSON chip list; returns the JSON."""
    import rasterio

    records, per_scene = [], {}
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar, \
            ThreadPoolExecutor(max(1, threads)) as pool, rasterio.Env(GDAL_PAM_ENABLED="NO"):
        for n, scene in enumerate(scenes, start=1):
            if scene["scene"] not in images:
                raise InputError(scene["scene"], "no image was given for this scene")
            counts = SceneCounts()
            with rasterio.open(images[scene["scene"]]) as src:
                pending = chip_scene(src, {**scene, "counts": counts},
                                     annotations.get(scene["scene"], []), params, pool)
                for record, future in pending:
                    data = future.result()
                    tar.addfile(_tar_member(record.file, len(data)), io.BytesIO(data))
                    records.append(asdict(record))
            per_scene[scene["scene"]] = asdict(counts)
            log.info("chipped scene %s (%d/%d): %d chips", scene["scene"], n, len(scenes),
                     counts.chips_written)
    result = {"params": params_dict(params), "nadir_version": __version__,
              "scenes": per_scene, "chips": records}
    json_path.write_text(json.dumps(result, sort_keys=True) + "\n")
    return result


def params_dict(params: ChipParams) -> dict:
    d = asdict(params)
    d["bands"] = list(params.bands) if params.bands else None
    d["stretch_percentiles"] = list(params.stretch_percentiles)
    return d


def write_manifest(shard_jsons: list[Path], out: Path) -> dict:
    """Everything needed to reproduce and audit the chips: parameters, versions, counts."""
    shards = [json.loads(p.read_text()) for p in shard_jsons]
    params = {json.dumps(s["params"], sort_keys=True) for s in shards}
    if len(params) != 1:
        raise InputError(out, "shards were cut with different parameters; rerun chipping")
    scenes: dict[str, dict] = {}
    for i, shard in enumerate(shards):
        for scene, counts in shard["scenes"].items():
            scenes[scene] = {"shard": i, **counts}
    totals = {key: sum(c[key] for c in scenes.values())
              for key in asdict(SceneCounts())}
    manifest = {"nadir_version": shards[0]["nadir_version"], "params": shards[0]["params"],
                "shards": len(shards), "totals": totals, "scenes": dict(sorted(scenes.items()))}
    out.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
