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

import json
import logging
import tarfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from nadir import __version__
from nadir.chip.encode import render_chip
from nadir.chip.objects import SceneObjects, keep_empty
from nadir.core.errors import InputError
from nadir.core.names import check_name
from nadir.datasets.tables import EXCLUDED, Annotation, read_annotations, read_scenes
from nadir.raster.band_stats import BandSums
from nadir.raster.chip_params import ChipParams
from nadir.raster.georeferencing import scene_georeferencing
from nadir.raster.opener import DATASET_IMAGE, open_raster
from nadir.raster.radiometry import Radiometry
from nadir.raster.windows import (
    WindowCounts,
    WindowReader,
    gdal_settings,
    reads_by_window,
    scene_windows,
    window_offsets,
)
from nadir.storage.shards import add_member

log = logging.getLogger(__name__)

# How much of the next window row's new rows a row-sequential scene is decoded ahead (the
# ring's extra depth): the whole of them measured 1.6 x from 1 to 2 cores, but at 0.21 of
# DOTA_devkit's memory on the 12,000 px bench scene; three quarters keep it under 0.2.
DECODE_AHEAD_SHARE = 0.75
PROGRESS_INTERVAL_S = 10.0  # at most one progress line per scene this often (plus the last)


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
    # Where the chip's bytes lie in the shard (nadir.storage.shards.add_member): readers fetch
    # exactly this range, from S3 too, without scanning the tar.
    offset: int = 0
    size: int = 0


def encoding_threads(src, threads: int) -> int:
    """How many of a job's `threads` encode chips of this scene: all of them for files read
    row-sequentially, whose rows a thread of the reader decodes (it waits inside GDAL, which
    releases Python's lock, most of the time); one less for tiled files, whose windows the
    chipping thread reads itself (GDAL decodes their blocks on threads of its own)."""
    return max(1, threads - 1) if reads_by_window(src) else max(1, threads)


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
    windows = WindowCounts()
    rows = window_offsets(src.height, size, params.overlap)
    columns = len(window_offsets(src.width, size, params.overlap))
    log.info("scene %s: %d x %d px, %d band(s) %s, %s, %d x %d windows, %d objects",
             name, src.width, src.height, src.count, src.dtypes[0], reader.description,
             columns, len(rows), len(annotations))
    started = last_report = time.monotonic()

    def report(rows_done: int) -> None:
        done = rows_done * columns
        log.info("scene %s: window row %d/%d, %d/%d windows, %d chips kept, %.1f windows/s",
                 name, rows_done, len(rows), done, columns * len(rows), counts.chips_written,
                 done / max(time.monotonic() - started, 1e-9))

    with reader:
        for window, valid in scene_windows(reader, params, windows):
            x0, y0 = window.col_off, window.row_off
            if time.monotonic() - last_report >= PROGRESS_INTERVAL_S:
                last_report = time.monotonic()
                report(rows.index(y0))
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
            pieces = reader.lend(window)
            yield record, partial(render_chip, pieces, valid, radiometry, params, transform,
                                  crs, partial(reader.give_back, window),
                                  count_bands=scene["split"] == "train")
        report(len(rows))
    counts.nodata_skipped = windows.nodata_skipped
    counts.objects_in_no_chip = len({a.object for a in annotations} - seen_objects)


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
    band_sums: BandSums | None = None  # of the train chips

    def write_oldest(tar: tarfile.TarFile) -> None:
        nonlocal separator, band_sums
        record, future = pending.popleft()
        image, geotiff, sums = future.result()
        if sums is not None:
            if band_sums is None:
                band_sums = sums
            else:
                band_sums.add(sums)
        record.offset, record.size = add_member(tar, record.file, image)
        if geotiff is not None:
            add_member(tar, record.geotiff, geotiff)
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
        summary = {"params": params.to_record(), "nadir_version": __version__,
                   "scenes": per_scene,
                   "train_band_sums": band_sums.to_record() if band_sums is not None else None}
        listing.write("], " + json.dumps(summary, sort_keys=True)[1:] + "\n")
    return summary


def cut_shard(scenes: str | Path, annotations: str | Path, images: list[str | Path],
              settings: dict, tar: str | Path, chip_list: str | Path, threads: int = 1,
              max_raster_values: int | None = None) -> dict:
    """The chip job: the scenes of `images` (those the scene table lists and the index did not
    exclude) cut under the `chipping` settings into one shard, `tar`, and its `chip_list`."""
    params = ChipParams.from_config(settings)
    by_scene = images_by_scene(images)
    chosen = scenes_to_chip(Path(scenes), by_scene)
    result = chip_shard(chosen, read_annotations(Path(annotations)), by_scene, params,
                        Path(tar), Path(chip_list), threads, max_raster_values)
    chips = sum(counts["chips_written"] for counts in result["scenes"].values())
    log.info("shard %s: %d chips from %d scenes", tar, chips, len(chosen))
    return result
