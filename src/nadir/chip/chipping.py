"""The chip stage: cut scenes into fixed-size chips with GDAL windowed reads, pack them in shards.

Rules (docs/chipping.md explains them for users; tests/test_chipping.py tests each):
- Windows step by `size - overlap`; the last row and column are shifted back to end at the
  image edge, so no chip hangs over it. A scene smaller than a chip (along an axis) gives one
  chip at offset 0 along that axis, padded to full size with `pad_value`.
- Reading never holds a whole scene. Tiled rasters (blocks narrower than the scene) are read
  one chip window at a time: memory does not depend on the scene's size. Rasters stored in
  full-width rows (PNG, striped GeoTIFF) are read strictly top to bottom, on a thread of their
  own, into a ring of one window row and the next one's new rows (`size` + stride + one block
  of rows, less one), so every row is decoded once, the next window row is decoded while the
  chips of this one are encoded, and memory grows with the scene's width only. A ring row is
  overwritten only once no chip still being encoded reads it.
- An object is clipped to the part of the chip window that lies inside the scene; it is kept
  when at least `min_visible` of its whole area is inside, and marked truncated when any of it
  is outside. Its box is the bounds of the clipped polygon(s). Fragments below the threshold are
  dropped and counted.
- Chips with no kept object are kept at rate `empty_keep`, decided by a hash of (seed, scene,
  window), so the same config always keeps the same chips. Chips whose nodata fraction (over
  the part of the window inside the scene; padding is not nodata) exceeds `nodata_max` are
  skipped and counted. Nodata pixels of a kept chip are set to `pad_value`.
- Non-8-bit input is stretched to 8 bits per band between per-scene percentiles computed on a
  decimated read (valid pixels only); `bands` selects and orders the bands (1-based); a chip has
  one band (grey) or three (RGB).
- Chips are cut in row-major order and encoded on other threads than the one that cuts them,
  with a bounded queue; the shard is written in chip order, so the output does not depend on
  the number of threads. GDAL decodes tiled input on the job's threads too.
"""

from __future__ import annotations

import io
import json
import logging
import random
import struct
import tarfile
import threading
import time
import warnings
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from isal import isal_zlib
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely.geometry import box

from nadir import __version__
from nadir.core.errors import InputError, NadirError
from nadir.core.names import check_name
from nadir.datasets.tables import Annotation, read_scenes
from nadir.index.normalise import EXCLUDED
from nadir.raster.georeferencing import local_georeferencing
from nadir.raster.opener import DATASET_IMAGE, open_raster
from nadir.storage.shards import read_chip_list

log = logging.getLogger(__name__)

EPS = 1e-9
STRETCH_SAMPLE_PX = 1024  # the longest side of the decimated read used for percentiles
GDAL_CACHE_MIN_BYTES = 8 << 20  # GDAL's block cache is capped per scene (see gdal_cache_bytes)
GDAL_CACHE_SEQUENTIAL_BYTES = 1 << 20  # for scenes read row by row, which decode each row once
# How much of the next window row's new rows a row-sequential scene is decoded ahead (the
# ring's extra depth): the whole of them measured 1.6 x from 1 to 2 cores, but at 0.21 of
# DOTA_devkit's memory on the 12,000 px bench scene; three quarters keep it under 0.2.
DECODE_AHEAD_SHARE = 0.75
READ_ROWS = 64  # rows per GDAL read of a row-sequential scene (in whole blocks, at least one)
PROGRESS_INTERVAL_S = 10.0  # at most one progress line per scene this often (plus the last)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Settings under `chipping:` that concern the workflow, not how one chip is cut.
WORKFLOW_KEYS = {"shards"}


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
    geotiff: bool = False
    seed: int = 0

    def __post_init__(self):
        problems = []
        if not 0 <= self.overlap < self.size:
            problems.append(f"overlap must be in [0, size); got {self.overlap} with size "
                            f"{self.size}")
        if self.bands is not None and len(self.bands) not in (1, 3):
            problems.append(f"bands must list 1 (grey) or 3 (RGB) bands; got {list(self.bands)}")
        low, high = self.stretch_percentiles
        if not 0 <= low < high <= 100:
            problems.append("stretch_percentiles must be [low, high] with 0 <= low < high <= "
                            f"100; got {list(self.stretch_percentiles)}")
        if self.image_format not in ("jpeg", "png"):
            problems.append(f"image_format must be jpeg or png; got {self.image_format!r}")
        if problems:
            raise NadirError("invalid chipping settings: " + "; ".join(problems))

    @classmethod
    def from_config(cls, settings: dict) -> ChipParams:
        """Build from the `chipping:` config section (JSON lists become tuples)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known - WORKFLOW_KEYS)
        if unknown:
            raise NadirError(f"unknown chipping setting(s) {unknown}; known: {sorted(known)}")
        values = {k: v for k, v in settings.items() if k in known}
        for key in ("bands", "stretch_percentiles"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

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
    transform: list[float]  # GDAL order: x origin, pixel width, row rotation, y origin, ...
    objects: list[dict] = field(default_factory=list)
    geotiff: str | None = None  # the chip's GeoTIFF in the shard, when `geotiff` is on


def window_offsets(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets along one axis: a fixed stride, the last window flush with the edge."""
    if length <= size:
        return [0]
    stride = size - overlap
    offsets = list(range(0, length - size, stride))
    offsets.append(length - size)
    return offsets


class SceneObjects:
    """A scene's objects as vertex arrays with bounds, so each chip only clips the objects it
    touches, all of them in a few vectorised shapely calls.

    Shapes are built per window from the touching objects' vertices: an object is touched by a
    few windows only, and shapely geometries for every object of a scene would cost memory
    that grows with the scene. Objects wholly inside a window are kept as they are (vertex
    order included), without an intersection; only those crossing its border are clipped.
    """

    def __init__(self, annotations: list[Annotation], width: int, height: int):
        self.annotations = annotations
        self.width, self.height = width, height
        self.vertices = [np.asarray(ann.polygon, dtype=np.float64).reshape(-1, 2)
                         for ann in annotations]
        self.bounds = np.array([[*v.min(0), *v.max(0)] for v in self.vertices]).reshape(-1, 4)

    def shapes(self, indices: np.ndarray) -> np.ndarray:
        """The objects' polygons, made valid where they are not (self-crossing outlines).

        Repairs keep only polygons: a line or point left by a spike of the outline (which the
        default repair returns beside the polygons, in a collection) has no area to chip."""
        rings = [self.vertices[i] for i in indices]
        coords = np.concatenate([np.vstack([r, r[:1]]) for r in rings])
        ring_of = np.repeat(np.arange(len(rings)), [len(r) + 1 for r in rings])
        shapes = shapely.polygons(shapely.linearrings(coords, indices=ring_of))
        invalid = ~shapely.is_valid(shapes)
        if invalid.any():
            shapes[invalid] = shapely.make_valid(shapes[invalid], method="structure",
                                                 keep_collapsed=False)
        return shapes

    def clip(self, x0: int, y0: int, size: int,
             min_visible: float) -> tuple[list[dict], int, set[int]]:
        """Objects visible in one chip window: (kept objects, dropped fragments, kept ids)."""
        x1, y1 = min(x0 + size, self.width), min(y0 + size, self.height)
        b = self.bounds
        touching = np.flatnonzero((b[:, 2] > x0) & (b[:, 0] < x1) & (b[:, 3] > y0)
                                  & (b[:, 1] < y1))
        if not len(touching):
            return [], 0, set()
        shapes = self.shapes(touching)
        areas = shapely.area(shapes)
        tb = b[touching]
        inside = (tb[:, 0] >= x0) & (tb[:, 1] >= y0) & (tb[:, 2] <= x1) & (tb[:, 3] <= y1)
        parts = shapes.copy()
        crossing = ~inside & (areas > 0)
        if crossing.any():
            parts[crossing] = shapely.intersection(shapes[crossing], box(x0, y0, x1, y1))
        # Lines and points an intersection may leave have no area, so this is the polygons'.
        visible = np.divide(shapely.area(parts), areas, out=np.zeros(len(areas)),
                            where=areas > 0)
        seen = visible > 0
        keep = np.flatnonzero(seen & (visible + EPS >= min_visible))
        if not len(keep):
            return [], int(seen.sum()), set()
        # Every polygon with an area of every kept object, in object order (`owner`).
        geoms, owner = shapely.get_parts(parts[keep], return_index=True)
        polygonal = (shapely.get_type_id(geoms) == 3) & (shapely.area(geoms) > 0)
        geoms, owner = geoms[polygonal], owner[polygonal]
        bounds = shapely.bounds(geoms)
        firsts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        low = np.minimum.reduceat(bounds[:, :2], firsts)
        high = np.maximum.reduceat(bounds[:, 2:], firsts)
        boxes = np.round(np.hstack([low - (x0, y0), high - low]), 2).tolist()
        coords, ring = shapely.get_coordinates(shapely.get_exterior_ring(geoms),
                                               return_index=True)
        coords = np.round(coords - (x0, y0), 2).tolist()
        polygons: list[list] = [[] for _ in keep]
        start = 0
        for own, end in zip(owner.tolist(), np.cumsum(np.bincount(ring)).tolist(), strict=True):
            polygons[own].append([v for xy in coords[start:end - 1] for v in xy])  # open ring
            start = end
        kept, kept_ids = [], set()
        shares = np.round(visible[keep], 6).tolist()
        truncated = (visible[keep] < 1 - 1e-6).tolist()
        for k, j in enumerate(keep.tolist()):
            ann = self.annotations[touching[j]]
            kept.append({"object": ann.object, "category": ann.category,
                         "difficult": ann.difficult, "truncated": truncated[k],
                         "visible": shares[k], "bbox": boxes[k], "polygons": polygons[k]})
            kept_ids.add(ann.object)
        return kept, int(seen.sum()) - len(keep), kept_ids


def keep_empty(seed: int, scene: str, x0: int, y0: int, rate: float) -> bool:
    """A reproducible coin flip per window (string seeds hash identically across runs)."""
    coin = random.Random(f"{seed}:{scene}:{x0}:{y0}")  # noqa: S311 - reproducible, no secret
    return coin.random() < rate


def undecodable(src, scene: str | None, window: Window, exc: Exception) -> InputError:
    """GDAL's failure to decode a window (a truncated or corrupt file) as an InputError naming
    the file, the scene, the window in pixel offsets and GDAL's message."""
    x0, y0 = int(window.col_off), int(window.row_off)
    x1, y1 = x0 + int(window.width), y0 + int(window.height)
    return InputError(src.name, f"cannot read its pixels in window x {x0}-{x1}, y {y0}-{y1} "
                                f"(pixel offsets) of scene {scene or Path(src.name).stem}; "
                                f"GDAL: {exc}. The file is truncated or corrupt: copy or "
                                "download it again")


def named_read(src, scene: str | None, window: Window, read: Callable[[], np.ndarray]):
    """`read()`, GDAL's errors named by `undecodable`."""
    try:
        return read()
    except RasterioError as exc:
        raise undecodable(src, scene, window, exc) from None


class Radiometry:
    """Selects bands and maps a scene's pixel values to 8 bits."""

    def __init__(self, src, params: ChipParams, scene: str | None = None):
        self.scene = scene
        bands = params.bands or ((1, 2, 3) if src.count >= 3 else (1,))
        for b in bands:
            if not 1 <= b <= src.count:
                raise InputError(src.name, f"band {b} requested, the image has {src.count} band(s)")
        self.bands = list(bands)
        self.scale: tuple[np.ndarray, np.ndarray] | None = None
        if src.dtypes[0] != "uint8":
            self.scale = self._percentiles(src, params.stretch_percentiles)

    def _percentiles(self, src, percentiles: tuple[float, float]):
        """Per-band (low, high) from a decimated read (overviews when the file has them)."""
        factor = max(1, int(np.ceil(max(src.width, src.height) / STRETCH_SAMPLE_PX)))
        shape = (len(self.bands), max(1, src.height // factor), max(1, src.width // factor))
        sample = named_read(src, self.scene, Window(0, 0, src.width, src.height),
                            lambda: src.read(self.bands, out_shape=shape, masked=True))
        lows, highs = [], []
        for band in sample:
            values = band.compressed().astype(np.float64)
            values = values[np.isfinite(values)]  # float scenes may hold NaN without nodata
            lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
            lows.append(lo)
            highs.append(hi if hi > lo else lo + 1)
        log.info("%s: stretching bands %s from percentiles %s: low %s, high %s", src.name,
                 self.bands, list(percentiles), [round(v, 3) for v in lows],
                 [round(v, 3) for v in highs])
        return np.array(lows, dtype=np.float32), np.array(highs, dtype=np.float32)

    def to_8bit(self, pixels: np.ndarray, out: np.ndarray) -> None:
        """Stretch (bands, rows, cols) pixels in the file's type into uint8 `out` (the chip)."""
        lo, hi = (v[:, None, None] for v in self.scale)
        scaled = (pixels.astype(np.float32) - lo) * (255.0 / (hi - lo)) + 0.5
        np.clip(scaled, 0, 255, out=scaled)
        np.copyto(out, scaled, casting="unsafe")  # truncates, as astype(np.uint8) does


def reads_by_window(src) -> bool:
    """Whether chip windows can be read in any order: the file is tiled (its blocks are
    narrower than the scene). Otherwise (PNG, striped GeoTIFF) it is read row by row."""
    return src.block_shapes[0][1] < src.width


def gdal_cache_bytes(src, size: int) -> int:
    """GDAL's block cache for one scene: for tiled scenes the blocks under one chip (at least
    8 MiB), so that the next chip of a row finds the blocks it shares already decoded.

    GDAL's default (5% of RAM) would let the cache grow with the scene on a large machine.
    Scenes read row-sequentially decode every row once, straight into the ring buffer, and
    need next to no cache (1 MiB measured as fast as 8 MiB on a 20,000 px PNG).
    """
    if not reads_by_window(src):
        return GDAL_CACHE_SEQUENTIAL_BYTES
    block_rows, block_cols = src.block_shapes[0]
    itemsize = np.dtype(src.dtypes[0]).itemsize
    under_chip = (size + block_rows) * (size + block_cols) * src.count * itemsize
    return max(GDAL_CACHE_MIN_BYTES, under_chip + under_chip // 4)


def gdal_settings(src, size: int, threads: int) -> dict:
    """GDAL's configuration for chipping one scene, which must be open with them in force
    (GDAL reads GDAL_NUM_THREADS when it opens a file): the block cache, and `threads`
    decoding threads for compressed tiled files, whose blocks under a window then decode in
    parallel. Uncompressed files get none: there, GDAL's threads only cost time (3.9 vs
    3.4 s for the benchmark's 20,000 px scene)."""
    decoders = threads if reads_by_window(src) and src.compression is not None else 1
    return {"GDAL_CACHEMAX": gdal_cache_bytes(src, size), "GDAL_NUM_THREADS": decoders}


def encoding_threads(src, threads: int) -> int:
    """How many of a job's `threads` encode chips of this scene: all of them for files read
    row-sequentially, whose rows a thread of the reader decodes (it waits inside GDAL, which
    releases Python's lock, most of the time); one less for tiled files, whose windows the
    chipping thread reads itself (GDAL decodes their blocks on threads of its own)."""
    return max(1, threads - 1) if reads_by_window(src) else max(1, threads)


class WindowReader:
    """Reads chip windows of one scene, in row-major order, within a fixed memory bound.

    Tiled rasters are read window by window, on the calling thread. Rasters stored in
    full-width blocks (PNG, striped GeoTIFF) are read top to bottom, each row once, in whole
    blocks of about READ_ROWS rows, into a ring buffer of `size` + `ahead` + one block of
    rows, less one (at most the scene's height): GDAL decodes PNG sequentially, so going
    back up would restart the decoder. A ring row is overwritten only when no window needs it
    any more: neither the caller's current window row (the caller never goes back up) nor a
    window lent out (`lend`) and not yet given back.

    Used as a context manager, the reader decodes rows on a thread of its own, up to `ahead`
    rows past the current window row (chipping passes the stride: the next window row's new
    rows are decoded while the chips of this one are encoded); otherwise it decodes on the
    caller's thread when a window needs rows. Pixels are band-sequential (bands, rows, cols):
    GDAL fills that layout about three times faster than pixel-interleaved.
    """

    def __init__(self, src, bands: list[int], size: int, ahead: int = 0,
                 scene: str | None = None):
        self.src, self.bands, self.scene = src, bands, scene
        self.dtype = src.dtypes[0]
        self.block_rows = src.block_shapes[0][0]
        self.random_access = reads_by_window(src)
        self.masked = not all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums)
        self.decoder: threading.Thread | None = None
        if not self.random_access:
            # A window's rows, the `ahead` rows after them and the rest of the block that
            # holds the last of those (rows are read in whole blocks), or the whole scene.
            self.capacity = min(src.height, size + ahead + self.block_rows - 1)
            self.read_rows = self.block_rows * max(1, READ_ROWS // self.block_rows)
            self.ring = np.empty((len(bands), self.capacity, src.width), dtype=self.dtype)
            self.ring_valid = (np.empty((1, self.capacity, src.width), dtype=bool)
                               if self.masked else None)
            self.rows_read = 0  # rows above this one are in the ring (or were)
            self.position = 0  # the first row of the caller's current window row
            self.lent: Counter[int] = Counter()  # first rows of windows lent out
            self.changed = threading.Condition()  # guards the three above, closed, error
            self.closed = False
            self.error: Exception | None = None

    def __enter__(self) -> WindowReader:
        if not self.random_access:
            self.decoder = threading.Thread(target=self._decode_ahead, daemon=True,
                                            name=f"decode {self.src.name}")
            self.decoder.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop the decoding thread (before the caller closes the file)."""
        if self.decoder is not None:
            with self.changed:
                self.closed = True
                self.changed.notify_all()
            self.decoder.join()

    @property
    def description(self) -> str:
        if self.random_access:
            return "read window by window"
        ring_bytes = self.ring.nbytes + (self.ring_valid.nbytes if self.masked else 0)
        return (f"read row-sequentially through a {ring_bytes / 2**20:.1f} MiB ring buffer of "
                f"{self.capacity} rows")

    def read(self, x0: int, y0: int, out: np.ndarray) -> np.ndarray:
        """Fill `out`, (bands, rows, cols) in the file's type, with the window's pixels (GDAL
        writes straight into it for tiled files); returns `out`."""
        rows, cols = out.shape[1:]
        if self.random_access:
            window = Window(x0, y0, cols, rows)
            named_read(self.src, self.scene, window,
                       lambda: self.src.read(self.bands, window=window, out=out))
        else:
            top = 0
            for piece in self._ring_pieces(self.ring, x0, y0, cols, rows):
                out[:, top:top + piece.shape[1]] = piece
                top += piece.shape[1]
        return out

    def lend(self, x0: int, y0: int, cols: int, rows: int) -> list[np.ndarray]:
        """The window's pixels, (bands, rows, cols) in the file's type, for another thread,
        in pieces of consecutive rows: views of the ring (two where the window wraps around
        its end), which stays intact until `give_back(y0)`; for tiled files, one piece read
        now. Lending needs the reader's decoding thread (`with`): a lent row would otherwise
        stop the caller that decodes."""
        if self.random_access:
            return [self.read(x0, y0, np.empty((len(self.bands), rows, cols), self.dtype))]
        if self.decoder is None:
            raise RuntimeError("lend needs the reader's decoding thread: use it with `with`")
        pieces = self._ring_pieces(self.ring, x0, y0, cols, rows)
        with self.changed:
            self.lent[y0] += 1
        return pieces

    def give_back(self, y0: int) -> None:
        """A window lent by `lend` is no longer used: its rows may be overwritten."""
        if self.random_access:
            return
        with self.changed:
            self.lent[y0] -= 1
            if not self.lent[y0]:
                del self.lent[y0]
            self.changed.notify_all()

    def valid(self, x0: int, y0: int, cols: int, rows: int) -> np.ndarray | None:
        """The window's valid-pixel mask; None when the scene has neither nodata nor a mask.
        For row-sequential files a view of the ring (a copy where the window wraps around
        its end), intact as long as `lend`'s pixels."""
        if not self.masked:
            return None
        if self.random_access:
            window = Window(x0, y0, cols, rows)
            return named_read(self.src, self.scene, window,
                              lambda: self.src.dataset_mask(window=window)) > 0
        pieces = self._ring_pieces(self.ring_valid, x0, y0, cols, rows)
        return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1))[0]

    def _ring_pieces(self, ring: np.ndarray, x0: int, y0: int, cols: int,
                     rows: int) -> list[np.ndarray]:
        """The window's rows of a ring, once they are in it: one view, or two where the
        window wraps around the ring's end."""
        self._wait_for_rows(y0, y0 + rows)
        start = y0 % self.capacity
        first = min(rows, self.capacity - start)
        pieces = [ring[:, start:start + first, x0:x0 + cols]]
        if first < rows:
            pieces.append(ring[:, :rows - first, x0:x0 + cols])
        return pieces

    def _wait_for_rows(self, y0: int, end: int) -> None:
        """Rows [y0, end) are in the ring; the caller needs no row above y0 any more."""
        with self.changed:
            if y0 < self.position:
                raise RuntimeError(f"row {y0} is above the current window row "
                                   f"{self.position}; windows must go down")
            self.position = y0
            self.changed.notify_all()
        if self.decoder is None:
            self._decode(end)
        with self.changed:
            self.changed.wait_for(lambda: self.rows_read >= end or self.error is not None)
            if self.error is not None:
                raise self.error

    def _decode_ahead(self) -> None:
        """The decoding thread: every row of the scene, its error handed to the caller."""
        try:
            self._decode(self.src.height)
        except Exception as exc:  # noqa: BLE001 - raised again on the caller's thread
            with self.changed:
                self.error = exc
                self.changed.notify_all()

    def _decode(self, end: int) -> None:
        """Read rows into the ring, top to bottom, until row `end` is in it (or the reader
        is closed)."""
        src = self.src
        while self.rows_read < end:
            start = self.rows_read
            stop = self._next_read_end(start)
            if stop is None:
                return
            offset = start % self.capacity
            count = min(stop - start, self.capacity - offset)  # up to the ring's end
            window = Window(0, start, src.width, count)
            ring = self.ring[:, offset:offset + count]
            named_read(src, self.scene, window,
                       lambda w=window, out=ring: src.read(self.bands, window=w, out=out))
            if self.masked:
                self.ring_valid[0, offset:offset + count] = named_read(
                    src, self.scene, window, lambda w=window: src.dataset_mask(window=w)) > 0
            with self.changed:
                self.rows_read = start + count
                self.changed.notify_all()

    def _next_read_end(self, start: int) -> int | None:
        """Where the next read from row `start` ends, once it may start: whole blocks (or the
        scene's last rows), at most `read_rows`, and no row that replaces one a window still
        needs (row r replaces row r - capacity). None when the reader is closed."""
        def end() -> int:
            needed = min([self.position, *self.lent])
            stop = min(start + self.read_rows, needed + self.capacity)
            return self.src.height if stop >= self.src.height else stop - stop % self.block_rows

        with self.changed:
            self.changed.wait_for(lambda: self.closed or end() > start)
            return None if self.closed else end()


def window_validity(reader: WindowReader, x0: int, y0: int, cols: int, rows: int,
                    nodata_max: float) -> tuple[bool, np.ndarray | None]:
    """(usable, mask) of one window: unusable when its nodata share exceeds `nodata_max`; the
    valid-pixel mask, or None when every pixel is valid (nothing to set to `pad_value`)."""
    valid = reader.valid(x0, y0, cols, rows)
    if valid is None or valid.all():
        return True, None
    return 1.0 - valid.mean() <= nodata_max, valid


def chip_pixels(pieces: list[np.ndarray], valid: np.ndarray | None, radiometry: Radiometry,
                params: ChipParams) -> np.ndarray:
    """The (bands, size, size) uint8 chip of a window whose (bands, rows, cols) pixels come in
    pieces of consecutive rows (see `WindowReader.lend`): stretched to 8 bits, nodata pixels
    set to `pad_value`, padded at the scene's edge. The one piece itself when there is
    nothing to do; pieces are never changed (they may be views of the reader's ring, whose
    rows other chips share)."""
    bands, _, cols = pieces[0].shape
    rows, size = sum(piece.shape[1] for piece in pieces), params.size
    if (len(pieces) == 1 and radiometry.scale is None and valid is None
            and (rows, cols) == (size, size)):
        return pieces[0]
    chip = (np.empty((bands, size, size), np.uint8) if (rows, cols) == (size, size)
            else np.full((bands, size, size), params.pad_value, np.uint8))
    top = 0
    for piece in pieces:
        inside = chip[:, top:top + piece.shape[1], :cols]
        if radiometry.scale is None:
            inside[...] = piece
        else:
            radiometry.to_8bit(piece, out=inside)
        top += piece.shape[1]
    if valid is not None:
        chip[:, :rows, :cols][:, ~valid] = params.pad_value
    return chip


def render_chip(pieces: list[np.ndarray], valid: np.ndarray | None, radiometry: Radiometry,
                params: ChipParams, transform, crs,
                give_back: Callable[[], None]) -> tuple[bytes, bytes | None]:
    """Make and encode one window's chip (runs on an encoder thread); returns (image,
    GeoTIFF). `give_back` tells the reader that the window's pixels are no longer used."""
    try:
        chip = chip_pixels(pieces, valid, radiometry, params)
        geotiff = encode_geotiff(chip, transform, crs) if params.geotiff else None
        return encode(chip, params), geotiff
    finally:
        give_back()


def encode(chip: np.ndarray, params: ChipParams) -> bytes:
    """A (bands, h, w) uint8 chip (one band: grey; three: RGB) as JPEG or PNG bytes.

    Both encoders release Python's lock for their work, so encoders on several threads run
    at once. JPEG: OpenCV's libjpeg-turbo, with Pillow's settings (4:2:0 chroma subsampling
    at `jpeg_quality`): the same bytes as Pillow, about three times faster. OpenCV stores
    colour as BGR; cv2.merge interleaves the bands in that order, in C. PNG: see `encode_png`.
    OpenCV is imported only for JPEG: a PNG chipping job does without its 15 MiB.
    """
    if params.image_format == "png":
        return encode_png(chip)
    import cv2

    image = chip[0] if len(chip) == 1 else cv2.merge([chip[2], chip[1], chip[0]])
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
    if not ok:
        raise NadirError(f"OpenCV could not encode a {chip.shape} chip as JPEG")
    return data.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def encode_png(chip: np.ndarray) -> bytes:
    """A (bands, h, w) uint8 chip as an 8-bit grey or RGB PNG, every row with the Sub filter
    (each byte minus the same band's byte one pixel to the left), deflated by ISA-L at its
    level 1.

    Those are the choices OpenCV's fastest PNG settings make (level 1, Sub rows; Pillow tries
    every filter on every row), with ISA-L's deflate instead of zlib's: a noisy 1,024 px RGB
    chip took 12 ms here against 47 ms with OpenCV and 190 ms with Pillow, at the same size
    as OpenCV's. The filter is one numpy subtraction straight from the band-sequential chip.
    """
    bands, height, width = chip.shape
    rows = np.empty((height, 1 + width * bands), np.uint8)
    rows[:, 0] = 1  # the Sub filter
    pixels = rows[:, 1:].reshape(height, width, bands).transpose(2, 0, 1)  # a view of rows
    pixels[:, :, 0] = chip[:, :, 0]
    np.subtract(chip[:, :, 1:], chip[:, :, :-1], out=pixels[:, :, 1:])  # wraps modulo 256
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if bands == 1 else 2, 0, 0, 0)
    return b"".join([PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", isal_zlib.compress(rows, 1)),
                     _png_chunk(b"IEND", b"")])


def encode_geotiff(chip: np.ndarray, transform, crs) -> bytes:
    """The chip as a deflate-compressed GeoTIFF carrying the scene's CRS and its geotransform."""
    from rasterio.io import MemoryFile

    bands, height, width = chip.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": bands,
               "dtype": "uint8", "transform": transform, "compress": "deflate",
               "photometric": "RGB" if bands == 3 else "MINISBLACK"}
    if crs is not None:
        profile["crs"] = crs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memfile:
            with memfile.open(**profile) as dst:
                dst.write(chip)
            return memfile.read()


def chip_scene(src, scene: dict, counts: SceneCounts, annotations: list[Annotation],
               params: ChipParams, georeferencing: tuple[str | None, Affine]
               ) -> Iterator[tuple[ChipRecord, Callable]]:
    """Cut one open raster into chips; yields (record, job that returns the encoded bytes).
    `georeferencing` is the scene's (CRS, transform), its sidecar's for a PNG tile
    (`scene_georeferencing`).

    A row-sequential file is decoded on a thread of the reader's own meanwhile: close this
    generator (it stops that thread) before closing the file."""
    size, name = params.size, scene["scene"]
    radiometry = Radiometry(src, params, name)
    reader = WindowReader(src, radiometry.bands, size,
                          ahead=int((size - params.overlap) * DECODE_AHEAD_SHARE), scene=name)
    objects = SceneObjects(annotations, src.width, src.height)
    crs, scene_transform = georeferencing
    seen_objects: set[int] = set()
    xs = window_offsets(src.width, size, params.overlap)
    ys = window_offsets(src.height, size, params.overlap)
    log.info("scene %s: %d x %d px, %d band(s) %s, %s, %d x %d windows, %d objects",
             name, src.width, src.height, src.count, src.dtypes[0], reader.description,
             len(xs), len(ys), len(annotations))
    started = last_report = time.monotonic()
    with reader:
        for row, y0 in enumerate(ys, start=1):
            rows = min(size, src.height - y0)
            for x0 in xs:
                cols = min(size, src.width - x0)
                usable, valid = window_validity(reader, x0, y0, cols, rows, params.nodata_max)
                if not usable:
                    counts.nodata_skipped += 1
                    continue
                kept, dropped, kept_ids = objects.clip(x0, y0, size, params.min_visible)
                counts.fragments_dropped += dropped
                if not kept:
                    if not keep_empty(params.seed, name, x0, y0, params.empty_keep):
                        counts.empty_skipped += 1
                        continue
                    counts.empty_kept += 1
                seen_objects |= kept_ids
                counts.objects_kept += len(kept)
                counts.objects_truncated += sum(o["truncated"] for o in kept)
                transform = window_transform(Window(x0, y0, size, size), scene_transform)
                stem = f"{name}_{x0}_{y0}"
                record = ChipRecord(
                    file=f"{stem}.{params.extension}", scene=name, split=scene["split"], x=x0,
                    y=y0, width=size, height=size, objects=kept,
                    transform=[transform.c, transform.a, transform.b, transform.f, transform.d,
                               transform.e],
                    geotiff=f"{stem}.tif" if params.geotiff else None,
                )
                counts.chips_written += 1
                # Only kept chips are read; the encoder thread makes the chip of the pixels.
                pieces = reader.lend(x0, y0, cols, rows)
                yield record, partial(render_chip, pieces, valid, radiometry, params, transform,
                                      crs, partial(reader.give_back, y0))
            now = time.monotonic()
            if row == len(ys) or now - last_report >= PROGRESS_INTERVAL_S:
                last_report = now
                done = row * len(xs)
                log.info("scene %s: window row %d/%d, %d/%d windows, %d chips kept, "
                         "%.1f windows/s", name, row, len(ys), done, len(xs) * len(ys),
                         counts.chips_written, done / max(now - started, 1e-9))
    counts.objects_in_no_chip = len({a.object for a in annotations} - seen_objects)


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info


def scene_georeferencing(src, image: Path) -> tuple[str | None, Affine]:
    """An open scene's CRS and transform: its header's, completed by the PAM sidecar beside
    it (nadir.raster.georeferencing; GDAL's PAM stays off); the identity transform without one."""
    crs, transform = local_georeferencing(image, src.crs, src.transform)
    return crs, Affine(*transform) if transform else Affine.identity()


def images_by_scene(paths: list[Path]) -> dict[str, Path]:
    """The chip job's images by scene name (the file name without its suffix), each name
    checked by the name rule: it becomes the chips' file names in the shard."""
    images: dict[str, Path] = {}
    for path in map(Path, paths):
        name = check_name(path.stem, path, "scene name")
        if name in images:
            raise InputError(path, f"scene name {name!r} is also the name of {images[name]}")
        images[name] = path
    return images


def scenes_to_chip(scene_table: Path, images: dict[str, Path]) -> list[dict]:
    """The rows of the scene table whose images this shard was given, less the scenes the index
    excluded (its bad-input policy; see the index summary). An image the table does not list is
    an InputError."""
    scenes, excluded = [], []
    for s in read_scenes(scene_table):
        if s["scene"] in images:
            (excluded if s["split"] == EXCLUDED else scenes).append(s)
    if excluded:
        log.info("not chipping %d excluded scene(s): %s", len(excluded),
                 [s["scene"] for s in excluded[:5]])
    if len(scenes) + len(excluded) != len(images):
        unknown = sorted(set(images) - {s["scene"] for s in scenes + excluded})
        raise InputError(scene_table, f"images {unknown} are not in the scene table")
    return scenes


def chip_shard(scenes: list[dict], annotations: dict[str, list[Annotation]],
               images: dict[str, Path], params: ChipParams, tar_path: Path, json_path: Path,
               threads: int = 1, max_raster_values: int | None = None) -> dict:
    """Chip the given scenes into one tar shard and its JSON chip list.

    Returns the shard's parameters, version and per-scene counts. Chip records are written to
    `json_path` as they are made (the file is what `json.dumps(..., sort_keys=True)` of the
    whole shard would give), so memory does not grow with the number of chips.

    This thread cuts windows and clips objects; `encoding_threads` of the job's `threads`
    encode chips. Tiled input is read on this thread (GDAL decodes the blocks of compressed
    tiled input on `threads` threads of its own); row-sequential input on a thread of the
    reader's, one window row ahead. Both encoders (see `encode`) and GDAL's reading release
    Python's lock, so all of them run at once. At most one chip more than there are encoders
    waits, which bounds memory. The shard is written in chip order whatever `threads` is.

    Images are opened as dataset images (`nadir.raster.opener`: the driver their suffix names, a
    declared size within `max_raster_values`); a window GDAL cannot decode stops the shard with
    an error naming the image, the scene and the window.
    """
    import rasterio

    per_scene: dict[str, dict] = {}
    pending: deque[tuple[ChipRecord, Future]] = deque()
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    listing = open(json_path, "w")
    listing.write('{"chips": [')
    separator = ""

    def write_oldest(tar: tarfile.TarFile) -> None:
        nonlocal separator
        record, future = pending.popleft()
        image, geotiff = future.result()
        tar.addfile(_tar_member(record.file, len(image)), io.BytesIO(image))
        if geotiff is not None:
            tar.addfile(_tar_member(record.geotiff, len(geotiff)), io.BytesIO(geotiff))
        listing.write(separator + json.dumps(vars(record), sort_keys=True))
        separator = ", "

    with listing, tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar, \
            warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for n, scene in enumerate(scenes, start=1):
            name = scene["scene"]
            if name not in images:
                raise InputError(name, "no image was given for this scene")
            counts = SceneCounts()
            with open_raster(images[name], DATASET_IMAGE, max_raster_values) as probe:
                settings = gdal_settings(probe, params.size, threads)  # GDAL's, for this file
                encoders = encoding_threads(probe, threads)
                georeferencing = scene_georeferencing(probe, Path(images[name]))
            # Closed in this order: the chips (which stops the reader's thread), the encoders
            # (which may still use lent pixels), the file.
            with rasterio.Env(**settings), \
                    open_raster(images[name], DATASET_IMAGE, max_raster_values) as src, \
                    ThreadPoolExecutor(encoders) as pool, \
                    closing(chip_scene(src, scene, counts, annotations.get(name, []),
                                       params, georeferencing)) as chips:
                for record, job in chips:
                    pending.append((record, pool.submit(job)))
                    if len(pending) > encoders:
                        write_oldest(tar)
                while pending:
                    write_oldest(tar)
                per_scene[name] = {**asdict(counts), "crs": georeferencing[0],
                                   "width": src.width, "height": src.height}
            log.info("chipped scene %s (%d/%d): %d chips, %d objects kept (%d truncated), "
                     "%d fragments dropped, %d nodata chips skipped", name, n, len(scenes),
                     counts.chips_written, counts.objects_kept, counts.objects_truncated,
                     counts.fragments_dropped, counts.nodata_skipped)
        summary = {"params": params_dict(params), "nadir_version": __version__,
                   "scenes": per_scene}
        listing.write("], " + json.dumps(summary, sort_keys=True)[1:] + "\n")
    return summary


def params_dict(params: ChipParams) -> dict:
    d = asdict(params)
    d["bands"] = list(params.bands) if params.bands else None
    d["stretch_percentiles"] = list(params.stretch_percentiles)
    return d


def write_chip_manifest(shard_jsons: list[Path], out: Path) -> dict:
    """Everything needed to reproduce and audit the chips: parameters, versions, counts."""
    shards = [read_chip_list(p) for p in shard_jsons]
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
