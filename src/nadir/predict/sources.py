"""Which scenes inference reads, under which names, with whose credentials.

A scene is a path, an http(s) URL or an s3:// object, or comes from a STAC item collection or
an s3:// prefix (listed by a job of its own). STAC catalogues are untrusted input: their hrefs
stay under the catalogue's folder or are URLs, and their s3:// assets in buckets the config does
not name are read without the user's keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlsplit

from nadir.core.containment import contained
from nadir.core.errors import InputError, NadirError
from nadir.core.names import RULE, is_safe_name, safe_name
from nadir.core.schema import schema_default
from nadir.raster.opener import INFERENCE_SCENE
from nadir.storage import s3
from nadir.storage.urls import redact

log = logging.getLogger(__name__)

RASTER_SUFFIXES = INFERENCE_SCENE.suffixes  # what GDAL opens a scene as: nadir.raster.opener


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
    keys = list(asset_keys or schema_default("inference", "stac_assets"))
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
    """The raster objects under an s3:// prefix, named by file name (the storage's
    credentials: `nadir.storage.s3`)."""
    bucket, key_prefix = s3.split_url(prefix)
    scenes = []
    for obj in s3.list_objects(s3.client(endpoint), bucket, key_prefix):
        if obj["Key"].lower().endswith(RASTER_SUFFIXES):
            location = plain_s3_key(f"s3://{bucket}/{obj['Key']}", f"key {obj['Key']!r}",
                                    prefix)
            scenes.append(SceneSource(scene_name(obj["Key"]), location))
    if not scenes:
        raise InputError(prefix, f"no raster object ({', '.join(RASTER_SUFFIXES)}) under this "
                         "prefix")
    log.info("%s: %d scene(s)", prefix, len(scenes))
    return scenes


def list_scenes(prefix: str, listing: str | Path) -> list[SceneSource]:
    """The list_scenes job: the raster objects under an s3:// prefix of the storage, written
    to `listing`."""
    scenes = list_s3_prefix(prefix, s3.storage_endpoint())
    Path(listing).write_text(json.dumps({"source": prefix, "scenes": [
        {"name": s.name, "location": s.location} for s in scenes]}, indent=1) + "\n")
    return scenes
