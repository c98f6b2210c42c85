"""The one way nadir opens a raster that comes from data: dataset images (fetch, index, chip) and
inference scenes.

GDAL picks a driver by a file's content, and some drivers read other files or URLs that the
file names: a `.tif` holding VRT XML opens as a VRT and reads any local file
(`VRTRawRasterBand`) or URL (`/vsicurl/`) as pixels; a GeoTIFF's `.ovr` or `.msk` sidecar is
opened with whatever driver its content asks for. So:
- the driver comes from the file name's suffix, within an allow-list per role (GeoTIFF/COG, PNG,
  JPEG: what the supported datasets and inference need), and GDAL tries no other driver;
- every other GDAL raster driver is dropped from the process before the first open (GDAL_SKIP,
  applied by registering the drivers again), so no sidecar can open as a VRT either;
- only a role that allows it reads remote locations (http(s):// and s3://, as the config names
  them), and a local path is never read as one of GDAL's virtual file systems (`/vsi...`);
- the size a header declares (width x height x bands) is bounded by `rasters.max_values`, so a
  few-KB sparse file cannot make a job plan for terabytes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from nadir.core.errors import InputError, NadirError
from nadir.raster.georeferencing import local_georeferencing

MAX_VALUES_KEY = "rasters.max_values"
REMOTE_SCHEMES = ("http", "https", "s3")
# The drivers nadir opens files with, and what it writes chips and test files with (COG), and
# GDAL's in-memory rasters; GDAL drops every other driver from the process.
KEPT_DRIVERS = frozenset({"GTiff", "COG", "PNG", "JPEG", "MEM", "Memory"})
# What a file that GDAL's driver refused holds, by its first bytes (for the error message).
SIGNATURES = ((b"II*\x00", "a TIFF"), (b"MM\x00*", "a TIFF"), (b"II+\x00", "a BigTIFF"),
              (b"MM\x00+", "a BigTIFF"), (b"\x89PNG", "a PNG"), (b"\xff\xd8\xff", "a JPEG"),
              (b"<", "XML, e.g. a GDAL VRT that points to other files or URLs"))


@dataclass(frozen=True)
class RasterRole:
    """What a raster is for: which suffixes it may have, which driver each is opened with, and
    whether it may be remote."""

    name: str
    drivers: dict[str, str]  # lower-case suffix -> GDAL driver
    remote: bool = False

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(self.drivers)


_IMAGE_DRIVERS = {".tif": "GTiff", ".tiff": "GTiff", ".png": "PNG", ".jpg": "JPEG",
                  ".jpeg": "JPEG"}
# Images of a dataset (DOTA's PNG, xView's GeoTIFF, RarePlanes' GeoTIFF scenes and PNG tiles):
# local files under the fetch folder.
DATASET_IMAGE = RasterRole("dataset image", _IMAGE_DRIVERS)
# A scene inference reads: a path, or an http(s):// or s3:// URL the config names.
INFERENCE_SCENE = RasterRole("inference scene", _IMAGE_DRIVERS, remote=True)


def gdal_path(location: str) -> str:
    """Where GDAL reads a location: range requests for remote files, never a download."""
    parsed = urlparse(location)
    if parsed.scheme in ("http", "https"):
        return "/vsicurl/" + location
    if parsed.scheme == "s3":
        return f"/vsis3/{parsed.netloc}{parsed.path}"
    return location


def driver_for(location: str | Path, role: RasterRole) -> str:
    """The one GDAL driver a location is opened with, by its suffix; an InputError for a
    suffix or a kind of location the role does not allow."""
    text = str(location)
    scheme = urlparse(text).scheme
    if scheme in REMOTE_SCHEMES:
        if not role.remote:
            raise InputError(text, f"a {role.name} must be a local file, not a URL")
    elif scheme or text.startswith("/vsi"):
        raise InputError(text, f"a {role.name} is a local path"
                               f"{' or an http(s):// or s3:// URL' if role.remote else ''}; "
                               "GDAL's virtual file systems and other schemes are not opened")
    suffix = Path(urlparse(text).path if scheme else text).suffix.lower()
    if suffix not in role.drivers:
        raise InputError(text, f"a {role.name} must be one of {', '.join(role.suffixes)} "
                               f"(GeoTIFF/COG, PNG, JPEG), not {suffix or 'without a suffix'}; "
                               "convert it (e.g. gdal_translate -of COG)")
    return role.drivers[suffix]


def check_declared_size(where: str | Path, width: int, height: int, bands: int,
                        max_values: int | None = None) -> None:
    """An InputError when a raster declares more than `max_values` (default: the schema's
    `rasters.max_values`) values, width x height x bands."""
    limit = max_values if max_values is not None else default_max_values()
    values = int(width) * int(height) * int(bands)
    if values > limit:
        raise InputError(where, f"declares {width} x {height} px x {bands} band(s) = "
                                f"{values:,} values, above the limit of {limit:,} (config key "
                                f"{MAX_VALUES_KEY}); a real scene this large needs the key "
                                "raised, a damaged or hostile header needs the file replaced")


@functools.cache
def default_max_values() -> int:
    from nadir.core.schema import schema_default

    return schema_default("rasters", "max_values")


@functools.cache
def restrict_drivers() -> None:
    """Drop every GDAL raster driver but KEPT_DRIVERS from this process, once.

    GDAL_SKIP only acts when GDAL registers its drivers, which rasterio does once per process,
    maybe before nadir was imported; rasterio's flag that it did so is reset, so that
    registering again drops them. If a driver is still there afterwards (a rasterio that works
    otherwise), nothing is opened: refusing is safer than reading a VRT.
    """
    from rasterio import _env
    from rasterio.env import get_gdal_config, set_gdal_config

    gdal = _env.GDALEnv()
    gdal.start()
    unwanted = sorted(set(gdal.drivers()) - KEPT_DRIVERS)
    if unwanted:
        # Comma-separated: GDAL then takes driver names with spaces ("ESRI Shapefile") whole.
        earlier = get_gdal_config("GDAL_SKIP") or ""
        skipped = earlier.split(",") if "," in earlier else earlier.split()
        set_gdal_config("GDAL_SKIP", ",".join(sorted(set(skipped) | set(unwanted))))
        _env._have_registered_drivers = False
        gdal.start()
    left = sorted(set(gdal.drivers()) - KEPT_DRIVERS)
    if left:
        raise NadirError(f"cannot drop GDAL's drivers {left[:5]} from this process (rasterio "
                         "registers them differently); nadir opens no raster rather than risk "
                         "one that reads other files or URLs")


def content_kind(path: str | Path) -> str:
    """What a local file holds, by its first bytes, for an error message."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8).lstrip()
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    return next((kind for magic, kind in SIGNATURES if head.startswith(magic)),
                "another format")


@contextlib.contextmanager
def open_raster(location: str | Path, role: RasterRole,
                max_values: int | None = None) -> Iterator:
    """The open rasterio dataset of a location: with the driver its suffix names in `role`,
    nothing else, and its declared size within `max_values` (see `check_declared_size`).
    Remote locations need a role that allows them (and the caller's GDAL settings for them)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    driver = driver_for(location, role)
    restrict_drivers()
    path = gdal_path(str(location))
    try:
        src = rasterio.open(path, driver=driver)
    except RasterioIOError as exc:
        remote = urlparse(str(location)).scheme in REMOTE_SCHEMES
        found = "" if remote else f"; it holds {content_kind(location)}"
        raise InputError(location, f"not a readable raster image: opened as {driver} only, "
                                   f"by its suffix{found} (GDAL: {exc})") from None
    with src:
        check_declared_size(location, src.width, src.height, src.count, max_values)
        yield src


# How complete PNG and JPEG files end: GDAL reads a truncated one without an error (a PNG's
# missing rows come back as made-up pixels), so the index checks their last bytes.
TRAILERS = {".png": b"IEND\xaeB`\x82", ".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9"}


def _check_trailer(path: Path) -> None:
    trailer = TRAILERS.get(Path(path).suffix.lower())
    if trailer is None:
        return
    with open(path, "rb") as fh:  # the marker may be followed by padding or other data
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 4096))
        end = fh.read()
    if trailer not in end:
        raise InputError(path, f"truncated: a complete {Path(path).suffix.lstrip('.').upper()} "
                               "file ends with its end marker and this one does not; copy or "
                               "download it again")


def image_header(path: Path, max_raster_values: int | None = None) -> dict:
    """Size, bands, type and georeferencing of an image, read from its header only (and, for
    PNG and JPEG, its last bytes, which show whether it is complete). The image is opened as
    every dataset image is (`nadir.raster.opener`): by its suffix's driver, its declared size within
    `max_raster_values` (None: the schema's `rasters.max_values`). Georeferencing a PNG or JPEG
    keeps in a sidecar beside it is read from there (nadir.raster.georeferencing); GDAL's PAM stays
    off, so nothing is written beside the image."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(path, DATASET_IMAGE, max_raster_values) as src:
            header = {"width": src.width, "height": src.height, "bands": src.count,
                      "dtype": src.dtypes[0]}
            crs, transform = src.crs, src.transform
    _check_trailer(path)
    crs, transform = local_georeferencing(path, crs, transform)
    if crs is None or transform is None:  # half a georeferencing places nothing
        crs = transform = None
    return {**header, "crs": crs, "transform": transform}
