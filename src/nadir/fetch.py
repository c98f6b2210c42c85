"""The fetch stage: bring a dataset's files into one folder and describe them in a scene manifest.

A dataset's `source` lists entries, each a local path (folder, file or archive the user placed),
an http(s):// URL, or an s3://bucket/prefix/ (anonymous by default, for public buckets).
- Downloads are resumable (HTTP Range on a `.part` file kept in the cache), retried with
  exponential back-off, checked against `sha256` when given, and renamed to their final name only
  once complete and verified, so a partial download never looks complete.
- Archives (.zip, .tar, .tar.gz, .tgz) are extracted; folders are linked or copied.
- Every entry lands in its own sub-folder `<n>-<split>/` of the output folder; the manifest then
  lists each scene (image, label, split, size, georeferencing) with paths relative to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from nadir.errors import InputError, NadirError
from nadir.hashing import sha256_of
from nadir.index import image_header

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
BLOCK = 1 << 20
PROGRESS_EVERY = 256 << 20

# Where a user gets what nadir cannot download by itself (shown when a placed file is missing).
WHERE_TO_GET = {
    "dota": "DOTA is downloaded by hand after accepting its terms: "
            "https://captain-whu.github.io/DOTA/dataset.html (docs/datasets.md, DOTA)",
    "xview": "xView is downloaded by hand after registering: https://challenge.xviewdataset.org "
             "(docs/datasets.md, xView)",
    "rareplanes": "RarePlanes is public: s3://rareplanes-public/real/ (docs/datasets.md, "
                  "RarePlanes)",
}


@dataclass(frozen=True)
class SourceEntry:
    url: str
    split: str | None = None
    sha256: str | None = None
    max_scenes: int | None = None
    endpoint_url: str | None = None
    anonymous: bool = True

    @property
    def scheme(self) -> str:
        scheme = urlparse(self.url).scheme
        return scheme if scheme in ("http", "https", "s3") else "file"


@dataclass(frozen=True)
class FetchSettings:
    cache_dir: Path = Path("downloads")
    retries: int = 5
    timeout_s: float = 60.0


def _verify(path: Path, expected: str | None, origin: str) -> str:
    actual = sha256_of(path)
    if expected and actual != expected:
        raise InputError(path, f"SHA-256 mismatch for {origin}: expected {expected}, got {actual}"
                               "; the file is corrupt or a different version")
    return actual


def _retrying(what: str, attempts: int, action: Callable[[], None]) -> None:
    """Run `action`, retrying network errors with back-off (1, 2, 4, ... s, at most 30 s)."""
    for attempt in range(attempts + 1):
        try:
            action()
            return
        except HTTPError as exc:
            if exc.code < 500 and exc.code not in (408, 429):
                raise NadirError(f"{what}: HTTP {exc.code} {exc.reason}; not retried") from None
            error = exc
        except (URLError, HTTPException, TimeoutError, ConnectionError) as exc:
            error = exc
        if attempt < attempts:
            delay = min(30.0, 2.0 ** attempt)
            log.warning("%s failed (%s); retry %d/%d in %.0f s", what, error, attempt + 1,
                        attempts, delay)
            time.sleep(delay)
    raise NadirError(f"{what}: still failing after {attempts + 1} attempt(s): {error}")


def download(url: str, dest: Path, sha256: str | None, settings: FetchSettings) -> str:
    """Download `url` to `dest` via `dest.part`, resuming a previous partial download.

    Returns the file's SHA-256 (computed once, while verifying it)."""
    if dest.exists():
        log.info("already downloaded: %s", dest)
        return _verify(dest, sha256, url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def attempt() -> None:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = urlopen(Request(url, headers=headers), timeout=settings.timeout_s)
        except HTTPError as exc:
            if exc.code == 416 and offset:  # nothing left to send: the part is complete
                return
            raise
        with response:
            resumed = offset > 0 and response.status == 206
            if offset and not resumed:
                log.info("server ignored the range request; downloading %s from the start", url)
                offset = 0
            length = response.headers.get("Content-Length")
            expected = offset + int(length) if length is not None else None
            received, next_report = offset, offset + PROGRESS_EVERY
            with open(part, "ab" if resumed else "wb") as out:
                for block in iter(lambda: response.read(BLOCK), b""):
                    out.write(block)
                    received += len(block)
                    if received >= next_report:
                        log.info("%s: %d MiB of %s", dest.name, received >> 20,
                                 f"{expected >> 20} MiB" if expected else "unknown size")
                        next_report += PROGRESS_EVERY
        if expected is not None and received < expected:
            raise ConnectionError(f"connection closed after {received} of {expected} bytes")

    log.info("downloading %s", url)
    _retrying(f"download of {url}", settings.retries, attempt)
    try:
        digest = _verify(part, sha256, url)
    except InputError:
        part.unlink()  # a corrupt part would poison every resume
        raise
    os.replace(part, dest)
    log.info("downloaded and verified %s (%d bytes)", dest, dest.stat().st_size)
    return digest


def _s3_client(entry: SourceEntry):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(signature_version=UNSIGNED) if entry.anonymous else None
    return boto3.client("s3", endpoint_url=entry.endpoint_url, config=config)


def _s3_select(keys: list[str], prefix: str, wanted: Callable[[str], str | None],
               max_scenes: int | None) -> list[str]:
    """The keys the format wants; with `max_scenes`, the first N images (in key order) and the
    labels that share their names."""
    kinds = {k: wanted(k[len(prefix):]) for k in keys}
    images = sorted(k for k, kind in kinds.items() if kind == "image")
    labels = [k for k, kind in kinds.items() if kind == "label"]
    if max_scenes is not None:
        images = images[:max_scenes]
        stems = {Path(k).stem for k in images}
        labels = [k for k in labels if Path(k).stem in stems]
    return sorted(images + labels)


def fetch_s3(entry: SourceEntry, dest: Path, wanted: Callable[[str], str | None],
             settings: FetchSettings) -> list[str]:
    """Copy the wanted objects under an s3:// prefix into `dest`, keeping their relative keys."""
    parsed = urlparse(entry.url)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = _s3_client(entry)
    keys: list[str] = []

    def list_keys() -> None:
        keys.clear()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/"))

    _s3_call(f"listing {entry.url}", settings, list_keys)
    selected = _s3_select(keys, prefix, wanted, entry.max_scenes)
    if not selected:
        raise InputError(entry.url, f"no wanted files among the {len(keys)} object(s) under this "
                                    "prefix; check the prefix and the dataset's `tiled` setting")
    for n, key in enumerate(selected, start=1):
        target = dest / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        _s3_call(f"download of s3://{bucket}/{key}", settings,
                 lambda key=key, part=part: client.download_file(bucket, key, str(part)))
        os.replace(part, target)
        if n % 100 == 0 or n == len(selected):
            log.info("s3: %d/%d objects from %s", n, len(selected), entry.url)
    return selected


def _s3_call(what: str, settings: FetchSettings, action: Callable[[], None]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(settings.retries + 1):
        try:
            action()
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("AccessDenied", "NoSuchBucket", "403", "404", "NoSuchKey"):
                raise NadirError(f"{what}: {code} (for a public bucket, keep anonymous: true; "
                                 "for a private one, set anonymous: false and AWS_* "
                                 "credentials in the environment)") from None
            error: Exception = exc
        except BotoCoreError as exc:
            error = exc
        if attempt < settings.retries:
            time.sleep(min(30.0, 2.0 ** attempt))
    raise NadirError(f"{what}: still failing after {settings.retries + 1} attempt(s): {error}")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive, refusing members that would land outside `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    log.info("extracting %s", archive)
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for member in zf.namelist():
                if not (dest / member).resolve().is_relative_to(root):
                    raise InputError(archive, f"member {member!r} would be written outside "
                                              "the extraction folder")
            zf.extractall(dest)
    else:
        try:
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")
        except (tarfile.TarError, EOFError) as exc:
            raise InputError(archive, f"not a readable tar archive ({exc})") from None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def place(path: Path, dest: Path) -> None:
    """Put a placed or downloaded path into `dest`: extract archives, link or copy the rest."""
    if path.is_dir():
        shutil.copytree(path, dest, copy_function=_link_or_copy, dirs_exist_ok=True)
    elif is_archive(path):
        extract(path, dest)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        _link_or_copy(str(path), str(dest / path.name))


def obtain(entry: SourceEntry, dest: Path, dataset_format: str,
           wanted: Callable[[str], str | None], settings: FetchSettings) -> dict:
    """Bring one source entry into `dest`; returns what was fetched, for the manifest."""
    record = {"url": entry.url, "split": entry.split}
    if entry.scheme == "s3":
        record["objects"] = len(fetch_s3(entry, dest, wanted, settings))
        return record
    if entry.scheme in ("http", "https"):
        name = Path(urlparse(entry.url).path).name or "download"
        key = hashlib.sha256(entry.url.encode()).hexdigest()[:16]
        path = settings.cache_dir / key / name
        record["sha256"] = download(entry.url, path, entry.sha256, settings)
    else:
        path = Path(entry.url).expanduser()
        if not path.exists():
            raise InputError(path, f"not found: this {dataset_format} source entry is expected "
                                   f"at this path. {WHERE_TO_GET[dataset_format]}")
        if path.is_file():
            record["sha256"] = _verify(path, entry.sha256, str(path))
    place(path, dest)
    return record


def classify(relative: str, dataset_format: str, tiled: bool = True) -> str | None:
    """Whether a file (path relative to its source entry) is an image, a label, or neither."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    name = parts[-1].lower()
    if name.endswith(".part"):
        return None
    suffix = Path(name).suffix
    folders = parts[:-1]
    if dataset_format == "dota":
        if suffix in IMAGE_SUFFIXES:
            return "image"
        # DOTA's label archives also hold horizontal-box copies (`*reclabelTxt*`): not ours.
        if suffix == ".txt" and not any("reclabel" in f.lower() for f in folders):
            return "label"
    elif dataset_format == "xview":
        if suffix in (".tif", ".tiff"):
            return "image"
        if suffix in (".geojson", ".json"):
            return "label"
    elif dataset_format == "rareplanes":
        image_dir, label_dir = (("PS-RGB_tiled", "geojson_aircraft_tiled") if tiled
                                else ("PS-RGB", "geojson_aircraft"))
        if image_dir in folders and suffix in IMAGE_SUFFIXES:
            return "image"
        if label_dir in folders and suffix == ".geojson":
            return "label"
    return None


def scan(root: Path, entries: list[tuple[SourceEntry, Path]], dataset_format: str,
         tiled: bool) -> dict:
    """Pair images and labels by file name (per split) and read every image's header."""
    scenes: dict[str, dict] = {}
    labels: dict[tuple, str] = {}
    label_files: list[str] = []
    for entry, folder in entries:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            kind = classify(path.relative_to(folder).as_posix(), dataset_format, tiled)
            relative = path.relative_to(root).as_posix()
            if kind == "image":
                if path.stem in scenes:
                    raise InputError(path, f"scene name {path.stem!r} is also used by "
                                           f"{scenes[path.stem]['image']}; scene names (image "
                                           "file names without suffix) must be unique")
                scenes[path.stem] = {"scene": path.stem, "split": entry.split, "image": relative}
            elif kind == "label" and dataset_format == "xview":
                label_files.append(relative)
            elif kind == "label":
                key = (entry.split, path.stem)
                if key in labels:
                    raise InputError(path, f"a second label file for {path.stem!r} (the first "
                                           f"is {labels[key]})")
                labels[key] = relative
    ordered = [scenes[name] for name in sorted(scenes)]
    for n, scene in enumerate(ordered, start=1):
        if dataset_format != "xview":
            scene["label"] = labels.pop((scene["split"], scene["scene"]), None)
        scene.update(image_header(root / scene["image"]))
        if n % 100 == 0 or n == len(ordered):
            log.info("read image headers: %d/%d", n, len(ordered))
    return {"scenes": ordered, "label_files": sorted(label_files),
            "labels_without_image": sorted(labels.values())}


def fetch_dataset(name: str, spec: dict, files_dir: Path, settings: FetchSettings) -> dict:
    """Fetch every source entry of a dataset into `files_dir` and return its scene manifest."""
    dataset_format, tiled = spec["format"], spec.get("tiled", True)
    files_dir.mkdir(parents=True, exist_ok=True)
    entries, fetched = [], []
    for i, raw in enumerate(spec["source"]):
        entry = SourceEntry(**raw)
        folder = files_dir / f"{i:02d}-{entry.split or 'all'}"
        log.info("source %d/%d: %s", i + 1, len(spec["source"]), entry.url)
        fetched.append(obtain(entry, folder, dataset_format,
                              lambda rel: classify(rel, dataset_format, tiled), settings))
        entries.append((entry, folder))
    manifest = {"dataset": name, "format": dataset_format, "version": spec.get("version"),
                "sources": fetched, **scan(files_dir, entries, dataset_format, tiled)}
    if not manifest["scenes"]:
        raise InputError(files_dir, f"no {dataset_format} images found in the sources "
                                    f"{[e.url for e, _ in entries]}. "
                                    f"{WHERE_TO_GET[dataset_format]}")
    log.info("%s: %d scenes, %d label files without an image", name, len(manifest["scenes"]),
             len(manifest["labels_without_image"]))
    return manifest


def write_scene_manifest(manifest: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
