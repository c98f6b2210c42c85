"""One scene through a model: windows read straight from the source, detections merged.

A scene is never copied: GDAL reads the windows it needs (`/vsicurl/` and `/vsis3/` range
requests for remote files) through the one window generator chipping uses
(`nadir.raster.windows.scene_windows`), so memory is bounded by a window (tiled files) or a ring
of rows (striped files) whatever the scene's size, and windows that are mostly nodata are
skipped as at training time. Each window gets the band selection and the radiometric stretch
the model's chips got (the chip parameters its model.pt carries), then batches go through the
model while the next batch is read. Window detections are merged into the scene with scene
evaluation's own functions (`nadir.protocols.scenes`: clip to the scene, class-wise NMS), so a
val scene gives exactly the detections scene-level evaluation scores.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import numpy as np
from rasterio.windows import Window

from nadir.core.errors import InputError, NadirError
from nadir.core.schema import default_field
from nadir.predict.sources import SceneSource
from nadir.protocols.scenes import merge_overlaps, to_scene_coordinates
from nadir.raster.chip_params import ChipParams
from nadir.raster.georeferencing import (
    MAX_SIDECAR_BYTES,
    PAM_SUFFIX,
    georeferencing,
    read_sidecar,
    sidecar_text,
)
from nadir.raster.opener import INFERENCE_SCENE, open_raster
from nadir.raster.radiometry import Radiometry, rgb_composite
from nadir.raster.windows import (
    WindowCounts,
    WindowReader,
    chip_pixels,
    gdal_settings,
    scene_windows,
)
from nadir.storage import s3
from nadir.storage.download import open_url
from nadir.storage.urls import redact

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 10.0

WindowDetector = Callable[[list[np.ndarray]], list[list[dict]]]


@dataclass(frozen=True)
class InferenceSettings:
    """How a model is applied to a scene: as evaluation applies it to the val chips (windows
    per model call, detections kept per window, the merge's IoU: the `evaluation` keys), and
    which detections are kept and drawn (`inference` keys). Defaults: the schema's."""

    score_threshold: float = default_field("inference", "score_threshold")
    quicklook_size: int = default_field("inference", "quicklook_size")
    batch_size: int = default_field("evaluation", "batch_size")
    max_detections: int = default_field("evaluation", "max_detections")
    nms_iou: float = default_field("evaluation", "scene_nms_iou")

    @classmethod
    def from_config(cls, settings: dict) -> InferenceSettings:
        """From the config's sections, as the predict rule hands them over
        ({"inference": {...}, "evaluation": {...}}); what they leave out: the schema's."""
        inference, evaluation = settings.get("inference", {}), settings.get("evaluation", {})
        names = {"score_threshold": inference, "quicklook_size": inference,
                 "batch_size": evaluation, "max_detections": evaluation}
        values = {k: section[k] for k, section in names.items() if k in section}
        if "scene_nms_iou" in evaluation:
            values["nms_iou"] = evaluation["scene_nms_iou"]
        return cls(**values)


def window_chips(src, params: ChipParams, counts: WindowCounts,
                 scene: str | None = None) -> Iterator[tuple[Window, np.ndarray]]:
    """(window, chip) for every usable window of an open scene in row-major order, each chip
    exactly as chipping made it (bands, stretch, nodata set to `pad_value`, edges padded).
    `scene` names the scene in read errors (default: the file's name)."""
    radiometry = Radiometry(src, params, scene or Path(src.name).stem)
    reader = WindowReader(src, radiometry.bands, params.size, scene=radiometry.scene)
    log.info("%d x %d px, %d band(s) %s, %s, windows of %d px", src.width, src.height,
             src.count, src.dtypes[0], reader.description, params.size)
    for window, valid in scene_windows(reader, params, counts):
        yield window, chip_pixels([reader.read(window)], valid, radiometry, params)


def batched(windows: Iterator, size: int) -> Iterator[list]:
    batch = []
    for window in windows:
        batch.append(window)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def reads_ahead(source: SceneSource, device: str) -> bool:
    """Whether the next batch is read while the model works on this one: when the model runs
    on a GPU, or the scene comes over the network (reading is then mostly waiting). A local
    scene on the CPU is read in turn: decoding it would take cores from the model's threads
    (measured: 0.84 of the whole-scene baseline's throughput with read-ahead on 2 cores)."""
    return device == "cuda" or source.scheme != "file"


def prefetched(batches: Iterator[list]) -> Iterator[list]:
    """The batches, the next one read on another thread while the caller uses this one (GDAL
    and the model both release Python's lock); at most two batches exist at once."""
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch


@dataclass
class SceneWindows:
    """What the model found in a scene's windows, before the merge: the model step's result."""

    scene: str
    width: int
    height: int
    crs: str | None
    transform: list[float]  # affine a, b, c, d, e, f: pixel (col, row) to the scene's CRS
    chips: list[dict]  # per window read: id, scene, x, y (what to_scene_coordinates needs)
    detections: list[dict]  # window pixels, each with its window's image_id
    windows: dict  # the scene's windows, those read, those skipped as nodata
    quicklook: np.ndarray  # (3, h, w) uint8
    seconds: float

    def record(self) -> dict:
        """Everything but the quick-look picture, as JSON."""
        return {k: v for k, v in vars(self).items() if k != "quicklook"}


@dataclass
class SceneResult:
    scene: str
    width: int
    height: int
    crs: str | None
    transform: list[float]  # affine a, b, c, d, e, f: pixel (col, row) to the scene's CRS
    detections: list[dict]  # scene pixels: bbox xywh, category_id, score (and any polygon)
    windows: dict  # the scene's windows, those read, those skipped as nodata
    quicklook: np.ndarray  # (3, h, w) uint8
    seconds: float

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


class QuickLook:
    """A decimated RGB picture of the scene, filled from the windows as they are read: the
    chips' RGB bands (`rgb`), stretched to 8 bits by `scale` (the scene's percentiles) when
    they are kept at full bit depth."""

    def __init__(self, width: int, height: int, longest: int,
                 rgb: tuple[int, int, int] | None = (0, 1, 2),
                 scale: tuple[np.ndarray, np.ndarray] | None = None):
        self.rgb, self.scale = rgb, scale
        self.step = max(1, -(-max(width, height) // longest))
        self.image = np.zeros((3, -(-height // self.step), -(-width // self.step)), np.uint8)
        self.width, self.height = width, height

    def add(self, x0: int, y0: int, chip: np.ndarray) -> None:
        if chip.shape[0] != 3 or chip.dtype != np.uint8:
            chip = rgb_composite(chip, self.rgb, self.scale)
        rows, cols = min(chip.shape[1], self.height - y0), min(chip.shape[2], self.width - x0)
        step = self.step
        r0, c0 = (-y0) % step, (-x0) % step
        part = chip[:, r0:rows:step, c0:cols:step]
        top, left = (y0 + r0) // step, (x0 + c0) // step
        self.image[:, top:top + part.shape[1], left:left + part.shape[2]] = part


def display_of(src, params: ChipParams, scene: str
               ) -> tuple[tuple[int, int, int] | None, tuple[np.ndarray, np.ndarray] | None]:
    """(RGB places, per-band 8-bit scale) that the quicklook draws the scene's chips with: the
    chips' own scale where they are stretched, else the scene's `stretch_percentiles`."""
    if params.stretch or src.dtypes[0] == "uint8":
        return params.rgb_positions, None
    return params.rgb_positions, Radiometry(src, replace(params, stretch=True), scene).scale


def detect_scene(source: SceneSource, params: ChipParams, detector: WindowDetector,
                 settings: InferenceSettings, threads: int = 1,
                 s3_endpoint: str | None = None, read_ahead: bool = True,
                 max_raster_values: int | None = None) -> SceneResult:
    """`detect_windows`, then `merge_windows` at the settings' IoU, in one process."""
    return merge_windows(detect_windows(source, params, detector, settings, threads,
                                        s3_endpoint, read_ahead, max_raster_values),
                         settings.nms_iou)


def detect_windows(source: SceneSource, params: ChipParams, detector: WindowDetector,
                   settings: InferenceSettings, threads: int = 1,
                   s3_endpoint: str | None = None, read_ahead: bool = True,
                   max_raster_values: int | None = None) -> SceneWindows:
    """Read every window of a scene and detect in batches; with `read_ahead` (see
    `reads_ahead`) the next batch is read while the detector runs.

    The scene is opened as every inference scene is (`nadir.raster.opener`: the driver its suffix
    names, a declared size within `max_raster_values`); a window GDAL cannot decode stops it
    with an error naming the scene, the window and GDAL's message."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    started = last_report = time.monotonic()
    counts = WindowCounts()
    chips: list[dict] = []  # per window: id, x, y (what to_scene_coordinates needs)
    window_detections: list[dict] = []
    shown = redact(source.location)
    access = s3.scene_access(source.anonymous)
    with s3.gdal_access(source.location, s3_endpoint, access) as options, \
            warnings.catch_warnings(), \
            rasterio.Env(GDAL_PAM_ENABLED="NO", **options):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with open_raster(source.location, INFERENCE_SCENE, max_raster_values) as probe:
                gdal = gdal_settings(probe, params.size, threads, whole_window_rows=True)
        except InputError as error:
            if not source.anonymous:
                raise
            raise InputError(shown, f"not readable without credentials ({error}): its bucket "
                                    "is not one the config names, so the user's S3 keys are "
                                    "not sent to it; name the bucket in inference.scenes (or a "
                                    "dataset source with anonymous: false) to read it with "
                                    "them") from None
        with rasterio.Env(**gdal), \
                open_raster(source.location, INFERENCE_SCENE, max_raster_values) as src:
            log.info("scene %s from %s%s", source.name, shown,
                     " (anonymously)" if source.anonymous else "")
            quicklook = QuickLook(src.width, src.height, settings.quicklook_size,
                                  *display_of(src, params, source.name))
            batches = batched(window_chips(src, params, counts, source.name),
                              settings.batch_size)
            for batch in prefetched(batches) if read_ahead else batches:
                for (window, chip), found in zip(batch, detector([c for _, c in batch]),
                                                 strict=True):
                    x0, y0 = window.col_off, window.row_off
                    chips.append({"id": len(chips), "scene": source.name, "x": x0, "y": y0})
                    window_detections += [d | {"image_id": chips[-1]["id"]} for d in found]
                    quicklook.add(x0, y0, chip)
                now = time.monotonic()
                if now - last_report >= PROGRESS_INTERVAL_S:
                    last_report = now
                    log.info("scene %s: %d/%d windows, %d skipped as nodata, %d detections, "
                             "%.1f windows/s", source.name, len(chips) + counts.nodata_skipped,
                             counts.windows, counts.nodata_skipped, len(window_detections),
                             len(chips) / max(now - started, 1e-9))
            width, height, crs, transform = src.width, src.height, src.crs, src.transform
    crs, transform = georeferencing(source.location, crs, transform,
                                    sidecar_text_at(source.location, s3_endpoint, access))
    if crs is None or transform is None:  # half a georeferencing places nothing
        crs, transform = None, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    seconds = time.monotonic() - started
    log.info("scene %s: %d windows read, %d skipped as nodata, %d window detections; %.1f s, "
             "%.1f windows/s", source.name, len(chips), counts.nodata_skipped,
             len(window_detections), seconds, len(chips) / max(seconds, 1e-9))
    return SceneWindows(source.name, width, height, crs, list(transform), chips,
                        window_detections, {"windows": counts.windows, "read": len(chips),
                                            "nodata_skipped": counts.nodata_skipped},
                        quicklook.image, seconds)


def merge_windows(found: SceneWindows, nms_iou: float) -> SceneResult:
    """The window detections shifted into the scene, clipped to it and merged by class-wise
    NMS at `nms_iou` (scene evaluation's own functions)."""
    scene = {"id": 1, "scene": found.scene, "width": found.width, "height": found.height}
    shifted, emptied = to_scene_coordinates(found.detections, {"images": found.chips}, [scene])
    merged = merge_overlaps(shifted, nms_iou)
    log.info("scene %s: %d window detections -> %d in the scene (%d outside it) -> %d after "
             "class-wise NMS at IoU %.2f", found.scene, len(found.detections), len(shifted),
             emptied, len(merged), nms_iou)
    return SceneResult(found.scene, found.width, found.height, found.crs, found.transform,
                       merged, found.windows, found.quicklook, found.seconds)


def sidecar_text_at(location: str, s3_endpoint: str | None,
                    access: s3.Access = s3.Access.STORAGE) -> str | None:
    """The text of a scene's GDAL PAM sidecar (`<location>.aux.xml`), wherever the scene is:
    a file beside it, an object beside it in the bucket (read with the scene's `access`), or a
    URL beside it (the scene URL's query kept: a token may open both; a signature made for the
    scene alone gets a 403, read as "no sidecar"); None when there is none. GDAL's PAM stays off
    (nadir.raster.georeferencing)."""
    parsed = urlparse(location)
    sidecar = parsed._replace(path=parsed.path + PAM_SUFFIX).geturl()
    if parsed.scheme in ("http", "https"):
        try:
            with open_url(sidecar, {"Range": f"bytes=0-{MAX_SIDECAR_BYTES}"}) as response:
                return sidecar_text(response.read(MAX_SIDECAR_BYTES + 1), sidecar)
        except HTTPError as exc:
            if exc.code in (403, 404):
                return None
            raise NadirError(f"{sidecar}: HTTP {exc.code} {exc.reason}") from None
        except (URLError, OSError) as exc:
            raise NadirError(f"{sidecar}: {exc}") from None
    if parsed.scheme == "s3":
        return _s3_sidecar_text(parsed.netloc, parsed.path.lstrip("/") + PAM_SUFFIX,
                                s3.client(s3_endpoint, access), sidecar)
    path = Path(sidecar)
    return read_sidecar(path) if path.is_file() else None


def _s3_sidecar_text(bucket: str, key: str, client, origin: str) -> str | None:
    """An object's text (at most a sidecar's size), or None when there is none or it may not
    be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{MAX_SIDECAR_BYTES}")
        return sidecar_text(body["Body"].read(), origin)
    except ClientError as exc:
        if s3.error_code(exc) in ("NoSuchKey", "404", "403", "AccessDenied"):
            return None
        raise NadirError(f"{origin}: {exc}") from None
    except BotoCoreError as exc:
        raise NadirError(f"{origin}: {exc}") from None
