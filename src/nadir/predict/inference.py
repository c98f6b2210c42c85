"""Apply a trained run to new scenes: windows read straight from the source, detections on a map.

A scene is a path, an http(s) URL or an s3:// object, or comes from a STAC item collection or an
s3:// prefix. It is never copied: GDAL reads the windows it needs (`/vsicurl/` and `/vsis3/`
range requests for remote files), with chipping's own reader, so memory is bounded by a window
(tiled files) or a ring of rows (striped files) whatever the scene's size, and windows that are
mostly nodata are skipped as at training time. Each window gets the band selection and the
radiometric stretch the run's chips got (recorded in its run.json), then batches go through the
model while the next batch is read. Window detections are shifted into the scene and merged with
scene evaluation's own functions (clip to the scene, class-wise NMS), so a val scene gives
exactly the detections scene-level evaluation scores.

Per scene and run: a GeoJSON in EPSG:4326, a GeoPackage in the scene's CRS (each feature with
class, score, model and the run's digest), a summary with per-class counts, and a quick-look PNG
drawn from the windows as they pass (nothing is read twice for it). A scene without a CRS gets
pixel coordinates (y down) in both files, and a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse, urlsplit
from urllib.request import Request, urlopen

import numpy as np

from nadir.chip.chipping import (
    ChipParams,
    Radiometry,
    WindowReader,
    chip_pixels,
    gdal_settings,
    reads_by_window,
    window_offsets,
    window_validity,
)
from nadir.core.containment import contained
from nadir.core.errors import InputError, NadirError
from nadir.core.hashing import sha256_of
from nadir.core.names import RULE, is_safe_name, safe_name
from nadir.evaluate.scenes import merge_overlaps, to_scene_coordinates
from nadir.raster.georeferencing import (
    MAX_SIDECAR_BYTES,
    PAM_SUFFIX,
    georeferencing,
    read_sidecar,
    sidecar_text,
)
from nadir.raster.opener import INFERENCE_SCENE, open_raster
from nadir.storage.urls import redact

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 10.0
RASTER_SUFFIXES = INFERENCE_SCENE.suffixes  # what GDAL opens a scene as: nadir.raster.opener
# STAC asset keys tried in this order when the config names none (common names of a visual
# or single-file asset in public catalogues).
DEFAULT_STAC_ASSETS = ("visual", "image", "data", "analytic")
PALETTE = [(255, 64, 64), (64, 160, 255), (255, 200, 0), (0, 220, 120), (220, 0, 220),
           (0, 230, 230), (255, 128, 0), (160, 100, 255)]


# --- scenes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneSource:
    """One scene to process: its name (used in output paths), where GDAL reads it, and, for
    s3://, whether it is read without the user's keys (a bucket the config does not name)."""

    name: str
    location: str
    anonymous: bool = False

    @property
    def scheme(self) -> str:
        scheme = urlparse(self.location).scheme
        return scheme if scheme in ("http", "https", "s3") else "file"


def scene_name(location: str) -> str:
    """A scene's default name: its file name without the suffix, made path-safe."""
    stem = Path(urlparse(location).path).name
    for suffix in RASTER_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    return safe_name(stem, "scene")


def is_listing(location: str) -> bool:
    """Whether an entry names several scenes: an s3:// prefix (ends with /) or a STAC file."""
    return (location.startswith("s3://") and location.endswith("/")) or \
        location.lower().endswith(".json")


def plain_s3_key(location: str, what: str, origin: str | Path) -> str:
    """An s3:// location whose key has no empty, `.` or `..` segment: GDAL or a server may
    normalise those into another key, or another bucket, read with the keys of this one."""
    key = urlsplit(location).path.removeprefix("/")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InputError(origin, f"{what}: an S3 key with an empty, '.' or '..' segment is "
                         "refused")
    return location


def stac_location(catalogue: Path, item: str, href: str) -> str:
    """Where a STAC asset is read. A catalogue is untrusted input: http(s):// and s3:// hrefs
    are taken as they are, a relative path must stay under the catalogue's folder; absolute
    local paths, `../` out of the folder, file:// and every other scheme are refused (they
    would let a catalogue choose any file, or any GDAL driver prefix, on the machine)."""
    scheme = urlsplit(href).scheme.lower()
    what = f"item {item!r}: asset href {redact(href)!r}"
    if scheme == "s3":
        return plain_s3_key(href, what, catalogue)
    if scheme in ("http", "https"):
        return href
    if scheme or href.startswith(("/", "\\")):
        raise InputError(catalogue, f"{what} is refused: an href must be an http(s):// or "
                         "s3:// URL or a path relative to the catalogue's folder")
    return str(contained(Path(catalogue).parent, href, what, catalogue))


def stac_scenes(path: Path, asset_keys: list[str] | None = None,
                signed_buckets: frozenset[str] = frozenset()) -> list[SceneSource]:
    """The scenes of a STAC item collection (a FeatureCollection of items, e.g. a saved STAC API
    search) or of a single item: per item, the first of `asset_keys` it has, named by item id.
    Hrefs follow `stac_location`; s3:// assets outside `signed_buckets` (the buckets the config
    names) are read anonymously: the user's keys go only where the user sent them."""
    keys = list(asset_keys or DEFAULT_STAC_ASSETS)
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable STAC JSON file ({exc})") from None
    kind = document.get("type") if isinstance(document, dict) else None
    items = document.get("features") if kind == "FeatureCollection" \
        else [document] if kind == "Feature" else None
    if not isinstance(items, list):
        raise InputError(path, "expected a STAC item collection (type FeatureCollection) or a "
                         f"STAC item (type Feature), got type {kind!r}")
    scenes = []
    for n, item in enumerate(items):
        label = f"{n} ({item.get('id')!r})" if isinstance(item, dict) else str(n)
        assets = item.get("assets") if isinstance(item, dict) else None
        if not isinstance(assets, dict):
            raise InputError(path, f"item {label} has no `assets` object")
        key = next((k for k in keys if k in assets), None)
        if key is None:
            raise InputError(path, f"item {label} has none of the assets "
                             f"{keys}; it has {sorted(assets)} (set inference.stac_assets)")
        href = assets[key].get("href") if isinstance(assets[key], dict) else None
        if not href or not isinstance(href, str):
            raise InputError(path, f"item {label}: asset {key!r} has no href")
        location = stac_location(Path(path), str(item.get("id", n)), href)
        anonymous = location.startswith("s3://") and \
            urlsplit(location).netloc not in signed_buckets
        name = safe_name(str(item.get("id") or scene_name(location)), scene_name(location))
        scenes.append(SceneSource(name, location, anonymous))
    log.info("STAC file %s: %d scene(s) from assets %s", path, len(scenes), keys)
    return scenes


def buckets_named(config: dict) -> frozenset[str]:
    """Buckets the config names for reading with the user's S3 keys: those of s3:// inference
    scenes, and of dataset sources read with credentials (`anonymous: false`)."""
    named = [s if isinstance(s, str) else s["source"]
             for s in config.get("inference", {}).get("scenes", [])]
    named += [e["url"] for d in config.get("datasets", {}).values()
              for e in d.get("source") or [] if e.get("anonymous") is False]
    return frozenset(urlsplit(u).netloc for u in named if u.startswith("s3://"))


def direct_scenes(entries: list, asset_keys: list[str] | None = None,
                  signed_buckets: frozenset[str] = frozenset()) -> list[SceneSource]:
    """The config's scene entries that need no listing job: paths, URLs, s3:// objects (a
    string, or {name, source}) and STAC files, in order. s3:// prefixes are left out."""
    scenes = []
    for entry in entries:
        location, name = (entry, None) if isinstance(entry, str) else \
            (entry["source"], entry.get("name"))
        if location.lower().endswith(".json"):
            scenes.extend(stac_scenes(Path(location), asset_keys, signed_buckets))
        elif not is_listing(location):
            scenes.append(SceneSource(name or scene_name(location), location))
    return scenes


def check_scene_names(scenes: list[SceneSource]) -> None:
    """Names become output folders: they must be path-safe and unique."""
    seen: dict[str, str] = {}
    for scene in scenes:
        if not is_safe_name(scene.name):
            raise NadirError(f"inference scene name {scene.name!r} ({redact(scene.location)}) "
                             f"must be {RULE}")
        if scene.name in seen and seen[scene.name] != scene.location:
            raise NadirError(f"two inference scenes are named {scene.name!r}: "
                             f"{redact(seen[scene.name])} and {redact(scene.location)}; give "
                             "one a `name`")
        seen[scene.name] = scene.location


def source_id(location: str) -> str:
    """A short stable id of a listed source (an s3:// prefix), for its listing file's name."""
    return hashlib.sha256(location.encode()).hexdigest()[:12]


def list_s3_prefix(prefix: str, endpoint: str | None) -> list[SceneSource]:
    """The raster objects under an s3:// prefix, named by file name (credentials as the
    checkpoint store reads them: SNAKEMAKE_STORAGE_S3_* variables, else boto3's chain)."""
    from nadir.train.checkpoints import S3Checkpoints

    bucket, _, key_prefix = prefix[len("s3://"):].partition("/")
    client = S3Checkpoints(bucket, key_prefix, endpoint).client
    scenes = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                 Prefix=key_prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].lower().endswith(RASTER_SUFFIXES):
                location = plain_s3_key(f"s3://{bucket}/{obj['Key']}", f"key {obj['Key']!r}",
                                        prefix)
                scenes.append(SceneSource(scene_name(obj["Key"]), location))
    if not scenes:
        raise InputError(prefix, f"no raster object ({', '.join(RASTER_SUFFIXES)}) under this "
                         "prefix")
    log.info("%s: %d scene(s)", prefix, len(scenes))
    return scenes


def window_row_cache_bytes(src, size: int) -> int:
    """GDAL's block cache for reading a tiled scene's windows: the blocks under a whole row of
    windows, so that each block is decoded, and for a remote scene fetched, once (a window row
    straddles two block rows; the next window row reuses the lower one). With chipping's
    cache, sized for the blocks under one window, a 20,000 px scene of 512 px blocks read in
    256 px windows decoded most blocks two to three times: 0.41 of the throughput of reading
    the whole scene at once. It grows with the scene's width only, like chipping's row ring."""
    block_rows = src.block_shapes[0][0]
    row_bytes = src.width * src.count * np.dtype(src.dtypes[0]).itemsize
    return (size + 2 * block_rows) * row_bytes * 5 // 4


@contextlib.contextmanager
def remote_access(location: str, s3_endpoint: str | None,
                  anonymous: bool = False) -> Iterator[dict]:
    """GDAL settings (returned) and, for s3://, credentials for reading one scene.

    Keys come from SNAKEMAKE_STORAGE_S3_ACCESS_KEY / _SECRET_KEY and are handed to GDAL as
    this process's AWS_* environment for the duration of the read (never as arguments, so they
    appear in no command line and no log); without keys, or with `anonymous` (a bucket the
    config does not name), s3:// is read without signing, whatever AWS_* variables hold.
    """
    options: dict = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "3",
                     "GDAL_HTTP_RETRY_DELAY": "1"}
    saved: dict[str, str | None] = {}
    if location.startswith("s3://"):
        access = os.environ.get("SNAKEMAKE_STORAGE_S3_ACCESS_KEY")
        secret = os.environ.get("SNAKEMAKE_STORAGE_S3_SECRET_KEY")
        if anonymous:
            options["AWS_NO_SIGN_REQUEST"] = "YES"
        elif access and secret:
            for name, value in (("AWS_ACCESS_KEY_ID", access), ("AWS_SECRET_ACCESS_KEY", secret)):
                saved[name] = os.environ.get(name)
                os.environ[name] = value
        elif not os.environ.get("AWS_ACCESS_KEY_ID"):
            options["AWS_NO_SIGN_REQUEST"] = "YES"
        if s3_endpoint:
            endpoint = urlparse(s3_endpoint)
            options |= {"AWS_S3_ENDPOINT": endpoint.netloc or endpoint.path,
                        "AWS_HTTPS": "NO" if endpoint.scheme == "http" else "YES",
                        "AWS_VIRTUAL_HOSTING": "FALSE"}
        options.setdefault("AWS_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    try:
        yield options
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class InferenceSettings:
    """How windows are cut and detections kept; `window`/`overlap`/`bands` None: the run's."""

    window: int | None = None
    overlap: int | None = None
    bands: tuple[int, ...] | None = None
    score_threshold: float = 0.3
    max_detections: int = 100
    nms_iou: float = 0.3
    batch_size: int = 8
    quicklook_size: int = 1024

    @classmethod
    def from_config(cls, settings: dict) -> InferenceSettings:
        values = {k: settings[k] for k in asdict(cls()) if k in settings}
        if values.get("bands") is not None:
            values["bands"] = tuple(values["bands"])
        return cls(**values)


def run_chip_params(run: dict, run_path: Path, settings: InferenceSettings) -> ChipParams:
    """The chipping the run was trained on (band selection, stretch, nodata and padding rules),
    with the window, overlap and bands the inference settings override."""
    recorded = run.get("chipping")
    if recorded is None:
        raise InputError(run_path, "records no chipping settings (`chipping`): the run was "
                         "trained before nadir recorded them; retrain it")
    params = ChipParams.from_config(recorded)
    changes = {k: v for k, v in (("size", settings.window), ("overlap", settings.overlap),
                                 ("bands", settings.bands)) if v is not None}
    if "bands" in changes and changes["bands"] != params.bands:
        log.warning("bands %s differ from the %s the run was trained on", list(changes["bands"]),
                    list(params.bands) if params.bands else "default")
    try:
        return replace(params, **changes)
    except NadirError as exc:
        raise NadirError(f"inference settings: {exc}") from None


# --- windows ---------------------------------------------------------------------------------

@dataclass
class WindowCounts:
    windows: int = 0
    read: int = 0
    nodata_skipped: int = 0


def scene_windows(src, params: ChipParams, counts: WindowCounts,
                  radiometry: Radiometry) -> Iterator[tuple[int, int, np.ndarray]]:
    """(x, y, chip) for every window of an open scene in row-major order, each chip exactly as
    chipping made it (bands, stretch, nodata set to `pad_value`, edges padded); windows whose
    nodata share exceeds `nodata_max` are skipped and counted."""
    reader = WindowReader(src, radiometry.bands, params.size, scene=radiometry.scene)
    size, bands = params.size, len(radiometry.bands)
    xs = window_offsets(src.width, size, params.overlap)
    ys = window_offsets(src.height, size, params.overlap)
    counts.windows = len(xs) * len(ys)
    log.info("%d x %d px, %d band(s) %s, %s, %d x %d windows of %d px", src.width, src.height,
             src.count, src.dtypes[0], reader.description, len(xs), len(ys), size)
    for y0 in ys:
        rows = min(size, src.height - y0)
        for x0 in xs:
            cols = min(size, src.width - x0)
            usable, valid = window_validity(reader, x0, y0, cols, rows, params.nodata_max)
            if not usable:
                counts.nodata_skipped += 1
                continue
            pixels = reader.read(x0, y0, np.empty((bands, rows, cols), src.dtypes[0]))
            counts.read += 1
            yield x0, y0, chip_pixels([pixels], valid, radiometry, params)


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


# --- the model -------------------------------------------------------------------------------

WindowDetector = Callable[[list[np.ndarray]], list[list[dict]]]


def load_detector(weights: Path, window: int, score_threshold: float, max_detections: int,
                  threads: int = 1) -> tuple[WindowDetector, list[dict]]:
    """A function from uint8 (bands, size, size) windows to their COCO detections (xywh in
    window pixels, category id, score, rounded as evaluation rounds them), and the categories.

    The one place inference meets a backend: models of the shared training loop (torchvision,
    transformers, yolox) are built as evaluation builds them. detectron2 runs are not supported
    yet.
    """
    import torch

    from nadir.config.catalogue import entry
    from nadir.train.data import category_labels
    from nadir.train.selection import coco_detections
    from nadir.train.torchvision_backend import prediction_model
    from nadir.train.weights import read_weights

    torch.set_num_threads(max(1, threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    saved = read_weights(weights)
    if entry(saved["model"]).backend == "detectron2":
        raise NadirError(f"{weights}: inference does not support detectron2 runs yet")
    model = prediction_model(saved, window, score_threshold, max_detections, device)
    category_of = {label: cid for cid, label in category_labels(saved["categories"]).items()}
    log.info("model %s (%d classes) on %s", saved["model"], saved["num_classes"], device.type)

    @torch.no_grad()
    def detect(chips: list[np.ndarray]) -> list[list[dict]]:
        pixels = torch.from_numpy(np.stack(chips)).to(device)
        if pixels.shape[1] == 1:  # grey chips reach the model as RGB, as at training time
            pixels = pixels.expand(-1, 3, -1, -1)
        return [coco_detections(out, category_of) for out in model(list(pixels.float() / 255.0))]

    return detect, saved["categories"]


# --- one scene -------------------------------------------------------------------------------

@dataclass
class SceneResult:
    scene: str
    width: int
    height: int
    crs: str | None
    transform: list[float]  # affine a, b, c, d, e, f: pixel (col, row) to the scene's CRS
    detections: list[dict]  # scene pixels: bbox xywh, category_id, score (and any polygon)
    counts: WindowCounts
    quicklook: np.ndarray  # (3, h, w) uint8
    seconds: float

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


class QuickLook:
    """A decimated RGB picture of the scene, filled from the windows as they are read."""

    def __init__(self, width: int, height: int, longest: int):
        self.step = max(1, -(-max(width, height) // longest))
        self.image = np.zeros((3, -(-height // self.step), -(-width // self.step)), np.uint8)
        self.width, self.height = width, height

    def add(self, x0: int, y0: int, chip: np.ndarray) -> None:
        rows, cols = min(chip.shape[1], self.height - y0), min(chip.shape[2], self.width - x0)
        step = self.step
        r0, c0 = (-y0) % step, (-x0) % step
        part = chip[:, r0:rows:step, c0:cols:step]
        top, left = (y0 + r0) // step, (x0 + c0) // step
        self.image[:, top:top + part.shape[1], left:left + part.shape[2]] = part


def detect_scene(source: SceneSource, params: ChipParams, detector: WindowDetector,
                 settings: InferenceSettings, threads: int = 1,
                 s3_endpoint: str | None = None, read_ahead: bool = True,
                 max_raster_values: int | None = None) -> SceneResult:
    """Read every window of a scene, detect in batches, merge into scene detections; with
    `read_ahead` (see `reads_ahead`) the next batch is read while the detector runs.

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
    with remote_access(source.location, s3_endpoint, source.anonymous) as options, \
            warnings.catch_warnings(), \
            rasterio.Env(GDAL_PAM_ENABLED="NO", **options):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with open_raster(source.location, INFERENCE_SCENE, max_raster_values) as probe:
                gdal = gdal_settings(probe, params.size, threads)
                if reads_by_window(probe):
                    gdal["GDAL_CACHEMAX"] = max(gdal["GDAL_CACHEMAX"],
                                                window_row_cache_bytes(probe, params.size))
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
            radiometry = Radiometry(src, params, source.name)
            quicklook = QuickLook(src.width, src.height, settings.quicklook_size)
            windows = scene_windows(src, params, counts, radiometry)
            batches = batched(windows, settings.batch_size)
            for batch in prefetched(batches) if read_ahead else batches:
                for (x0, y0, chip), found in zip(batch, detector([c for _, _, c in batch]),
                                                 strict=True):
                    chips.append({"id": len(chips), "scene": source.name, "x": x0, "y": y0})
                    window_detections += [d | {"image_id": chips[-1]["id"]} for d in found]
                    quicklook.add(x0, y0, chip)
                now = time.monotonic()
                if now - last_report >= PROGRESS_INTERVAL_S:
                    last_report = now
                    log.info("scene %s: %d/%d windows, %d skipped as nodata, %d detections, "
                             "%.1f windows/s", source.name, counts.read + counts.nodata_skipped,
                             counts.windows, counts.nodata_skipped, len(window_detections),
                             counts.read / max(now - started, 1e-9))
            width, height, crs, transform = src.width, src.height, src.crs, src.transform
    crs, transform = georeferencing(source.location, crs, transform,
                                    sidecar_text_at(source.location, s3_endpoint))
    scene = {"id": 1, "scene": source.name, "width": width, "height": height}
    shifted, emptied = to_scene_coordinates(window_detections, {"images": chips}, [scene])
    merged = merge_overlaps(shifted, settings.nms_iou)
    seconds = time.monotonic() - started
    log.info("scene %s: %d windows read, %d skipped as nodata; %d window detections -> %d "
             "in the scene (%d outside it) -> %d after class-wise NMS at IoU %.2f; %.1f s, "
             "%.1f windows/s", source.name, counts.read, counts.nodata_skipped,
             len(window_detections), len(shifted), emptied, len(merged), settings.nms_iou,
             seconds, counts.read / max(seconds, 1e-9))
    if crs is None or transform is None:  # half a georeferencing places nothing
        crs, transform = None, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    return SceneResult(source.name, width, height, crs, transform, merged, counts,
                       quicklook.image, seconds)


def sidecar_text_at(location: str, s3_endpoint: str | None) -> str | None:
    """The text of a scene's GDAL PAM sidecar (`<location>.aux.xml`), wherever the scene is:
    a file beside it, an object beside it in the bucket (credentials as for the scene), or a
    URL beside it (the scene URL's query kept: a token may open both; a signature made for the
    scene alone gets a 403, read as "no sidecar"); None when there is none. GDAL's PAM stays off
    (nadir.raster.georeferencing)."""
    parsed = urlparse(location)
    sidecar = parsed._replace(path=parsed.path + PAM_SUFFIX).geturl()
    if parsed.scheme in ("http", "https"):
        try:
            # The scheme is http(s), checked above: urllib opens no file:// or other scheme here.
            request = Request(sidecar,  # noqa: S310
                              headers={"Range": f"bytes=0-{MAX_SIDECAR_BYTES}"})
            with urlopen(request, timeout=30) as response:  # noqa: S310
                return sidecar_text(response.read(MAX_SIDECAR_BYTES + 1), sidecar)
        except HTTPError as exc:
            if exc.code in (403, 404):
                return None
            raise NadirError(f"{sidecar}: HTTP {exc.code} {exc.reason}") from None
        except (URLError, OSError) as exc:
            raise NadirError(f"{sidecar}: {exc}") from None
    if parsed.scheme == "s3":
        return _s3_sidecar_text(parsed.netloc, parsed.path.lstrip("/") + PAM_SUFFIX,
                                s3_endpoint, sidecar)
    path = Path(sidecar)
    return read_sidecar(path) if path.is_file() else None


def _s3_sidecar_text(bucket: str, key: str, endpoint: str | None, origin: str) -> str | None:
    """An object's text, read as GDAL reads the scene: with the SNAKEMAKE_STORAGE_S3_* keys,
    else the AWS_* environment, else unsigned (public buckets)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    access = os.environ.get("SNAKEMAKE_STORAGE_S3_ACCESS_KEY")
    secret = os.environ.get("SNAKEMAKE_STORAGE_S3_SECRET_KEY")
    options: dict = {"aws_access_key_id": access, "aws_secret_access_key": secret} \
        if access and secret else {}
    if not options and not os.environ.get("AWS_ACCESS_KEY_ID"):
        options["config"] = Config(signature_version=UNSIGNED)
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", "us-east-1"),
        **options)
    try:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{MAX_SIDECAR_BYTES}")
        return sidecar_text(body["Body"].read(), origin)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "403",
                                                          "AccessDenied"):
            return None
        raise NadirError(f"{origin}: {exc}") from None
    except BotoCoreError as exc:
        raise NadirError(f"{origin}: {exc}") from None


# --- outputs ---------------------------------------------------------------------------------

def pixel_outline(detection: dict) -> list[tuple[float, float]]:
    """A detection's outline in scene pixels: its polygon when the model gives one (oriented
    detectors), else its box; closed ring."""
    if detection.get("polygon"):
        p = detection["polygon"]
        ring = list(zip(p[0::2], p[1::2], strict=True))
    else:
        x, y, w, h = detection["bbox"]
        ring = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    return ring + ring[:1]


def to_crs_coordinates(ring: list[tuple[float, float]], transform) -> list[tuple[float, float]]:
    """Scene pixels (column, row) to the scene's CRS by its affine transform (a, b, c, d, e, f)."""
    a, b, c, d, e, f = transform
    return [(a * x + b * y + c, d * x + e * y + f) for x, y in ring]


def feature_properties(detection: dict, names: dict[int, str], run: dict,
                       digest: str, scene: str) -> dict:
    return {"class": names[detection["category_id"]], "category_id": detection["category_id"],
            "score": detection["score"], "model": run["model"], "dataset": run["dataset"],
            "run_digest": digest, "scene": scene}


def write_geojson(result: SceneResult, rings: list, properties: list[dict], path: Path) -> None:
    """EPSG:4326 (longitude, latitude) per RFC 7946; pixel coordinates without a CRS."""
    from rasterio.warp import transform as reproject

    features = []
    for ring, props in zip(rings, properties, strict=True):
        if result.georeferenced:
            ring = to_crs_coordinates(ring, result.transform)
            xs, ys = reproject(result.crs, "EPSG:4326", [p[0] for p in ring],
                               [p[1] for p in ring])
            ring = list(zip(xs, ys, strict=True))
        features.append({"type": "Feature", "properties": props, "geometry": {
            "type": "Polygon", "coordinates": [[[float(x), float(y)] for x, y in ring]]}})
    collection = {"type": "FeatureCollection", "name": result.scene, "features": features}
    if not result.georeferenced:
        collection["nadir:coordinates"] = "pixel (column, row) of the scene, y down"
    path.write_text(json.dumps(collection) + "\n")


def write_geopackage(result: SceneResult, rings: list, properties: list[dict],
                     path: Path) -> None:
    """One `detections` layer in the scene's CRS (pixel coordinates without one)."""
    import pyogrio.raw
    import shapely

    coords = [to_crs_coordinates(r, result.transform) if result.georeferenced else r
              for r in rings]
    geometry = shapely.to_wkb(np.array([shapely.Polygon(c) for c in coords], dtype=object))
    fields = ["class", "category_id", "score", "model", "dataset", "run_digest", "scene"]
    types = {"class": object, "category_id": np.int64, "score": np.float64, "model": object,
             "dataset": object, "run_digest": object, "scene": object}
    data = [np.array([p[f] for p in properties], dtype=types[f]) for f in fields]
    if path.exists():
        path.unlink()  # OGR would add a second layer to an old file
    pyogrio.raw.write(str(path), geometry=np.asarray(geometry, dtype=object), field_data=data,
                      fields=fields, layer="detections", driver="GPKG", geometry_type="Polygon",
                      crs=result.crs)


def write_quicklook(result: SceneResult, names: dict[int, str], path: Path,
                    min_score: float) -> None:
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(result.quicklook.transpose(1, 2, 0)))
    draw = ImageDraw.Draw(image)
    step = max(1, -(-max(result.width, result.height) // max(image.size)))
    ids = sorted(names)
    for det in result.detections:
        if det["score"] >= min_score:
            ring = [(x / step, y / step) for x, y in pixel_outline(det)]
            draw.line(ring, fill=PALETTE[ids.index(det["category_id"]) % len(PALETTE)], width=2)
    for n, cid in enumerate(ids):  # a legend in the top-left corner
        draw.rectangle([4, 4 + 14 * n, 14, 14 + 14 * n], fill=PALETTE[n % len(PALETTE)])
        draw.text((18, 3 + 14 * n), names[cid], fill=(255, 255, 255))
    image.save(path, "PNG")


def predict_scene(source: SceneSource, weights: Path, run_json: Path,
                  settings: InferenceSettings, outputs: dict[str, Path], threads: int = 1,
                  s3_endpoint: str | None = None, max_raster_values: int | None = None) -> dict:
    """Apply one run to one scene and write its GeoJSON, GeoPackage, summary and quick-look;
    returns the summary."""
    from nadir.train.loop import device_name

    run = json.loads(Path(run_json).read_text())
    params = run_chip_params(run, Path(run_json), settings)
    detector, categories = load_detector(weights, params.size, settings.score_threshold,
                                         settings.max_detections, threads)
    result = detect_scene(source, params, detector, settings, threads, s3_endpoint,
                          reads_ahead(source, device_name()), max_raster_values)
    if not result.georeferenced:
        log.warning("scene %s (%s) has no georeferencing: its GeoJSON and GeoPackage hold pixel "
                    "coordinates (column, row; y down)", source.name, redact(source.location))
    digest = sha256_of(Path(weights))[:16]
    names = {c["id"]: c["name"] for c in categories}
    rings = [pixel_outline(d) for d in result.detections]
    properties = [feature_properties(d, names, run, digest, source.name)
                  for d in result.detections]
    for path in outputs.values():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_geojson(result, rings, properties, Path(outputs["geojson"]))
    write_geopackage(result, rings, properties, Path(outputs["geopackage"]))
    write_quicklook(result, names, Path(outputs["quicklook"]), settings.score_threshold)
    per_class = {names[cid]: 0 for cid in sorted(names)}
    for det in result.detections:
        per_class[names[det["category_id"]]] += 1
    summary = {
        "scene": source.name, "source": redact(source.location), "width": result.width,
        "height": result.height, "crs": result.crs, "georeferenced": result.georeferenced,
        "transform": result.transform, "dataset": run["dataset"], "model": run["model"],
        "run_digest": digest, "detections": len(result.detections), "per_class": per_class,
        "windows": asdict(result.counts), "seconds": round(result.seconds, 2),
        "windows_per_second": round(result.counts.read / max(result.seconds, 1e-9), 2),
        "settings": asdict(settings) | {"window": params.size, "overlap": params.overlap,
                                        "bands": list(params.bands) if params.bands else None},
        "radiometry": {"stretch_percentiles": list(params.stretch_percentiles),
                       "nodata_max": params.nodata_max, "pad_value": params.pad_value},
        "pixel_detections": result.detections,
    }
    Path(outputs["summary"]).write_text(json.dumps(summary, indent=1) + "\n")
    log.info("scene %s: %d detections %s", source.name, len(result.detections), per_class)
    return summary
