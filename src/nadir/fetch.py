"""The fetch stage: bring a dataset's files into one folder and describe them in a scene manifest.

A dataset's `source` lists entries, each a local path (folder, file or archive the user placed),
an http(s):// URL, or an s3://bucket/prefix/ (anonymous by default, for public buckets).
- Downloads are resumable (HTTP Range with If-Range on the version a `.part` file in the cache
  holds, so two versions are never spliced), retried with exponential back-off, complete only at
  the length the server announced, checked against `sha256` when given, and renamed to their
  final name only once complete and verified, so a partial download never looks complete.
  Pretrained weights use the same downloader.
- s3:// objects come through the cache too, keyed by ETag; botocore does the retrying.
- Archives (.zip, .tar, .tar.gz, .tgz, and archives inside them) are extracted into a folder
  named after them; a folder is taken as its contents: its files are linked or copied and its
  archives extracted as if each were listed (DOTA's Drive folders of part zips).
- Images come with their georeferencing sidecars (`<image>.aux.xml`, world files), which
  nadir.georeferencing reads.
- Every entry lands in its own sub-folder `<n>-<split>/` of the output folder; the manifest then
  lists each scene (image, label, sidecars, split, size, georeferencing) with paths relative to
  it, and what was set aside: label variants (DOTA's horizontal-box copies, labels of another
  version) and identical copies of an image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from nadir.errors import InputError, NadirError
from nadir.georeferencing import (
    IMAGE_SUFFIXES,
    PAM_SUFFIX,
    is_sidecar_of,
    sidecar_image_stem,
)
from nadir.hashing import sha256_of
from nadir.index import image_header
from nadir.names import check_name, check_relative_path

log = logging.getLogger(__name__)

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


# What the fetch looked for, said when it found no image.
LOOKED_FOR = {
    "dota": " (.png, .tif or .jpg files, in the entries or in archives inside them)",
    "xview": " (.tif files, in the entries or in archives inside them)",
    "rareplanes": " (images in folders named PS-RGB_tiled, or PS-RGB with tiled: false)",
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


class ChecksumError(InputError):
    """A file whose SHA-256 is not the expected one (corrupt, or another version)."""


def verify(path: Path, expected: str | None, origin: str,
           hint: str = "the file is corrupt or a different version") -> str:
    """The file's SHA-256, checked against `expected`: a full digest, or the prefix that
    torchvision publishes in its file names (None: nothing to check)."""
    actual = sha256_of(path)
    if expected and not actual.startswith(expected.lower()):
        raise ChecksumError(path, f"SHA-256 mismatch for {origin}: expected {expected}, got "
                                  f"{actual}; {hint}")
    return actual


class Incomplete(ConnectionError):
    """A response that ended before the length its headers announced (retried, resumed)."""


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


@dataclass
class PartialDownload:
    """A `.part` file and what identifies the version it holds (`.part.json`): the ETag or
    Last-Modified and the full length the server announced. A part is resumed only with
    `If-Range` on that validator, so two versions of a file are never spliced together."""

    path: Path
    validator: str | None = None
    total: int | None = None

    @classmethod
    def open(cls, dest: Path) -> PartialDownload:
        part = cls(dest.with_name(dest.name + ".part"))
        try:
            state = json.loads(part.sidecar.read_text())
            part.validator, part.total = state["validator"], state["total"]
        except (OSError, ValueError, KeyError):
            part.discard()  # a part of unknown version cannot be resumed safely
        return part

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def resumable(self) -> bool:
        return self.validator is not None and self.total is not None and 0 < self.size

    def start(self, validator: str | None, total: int | None) -> None:
        """Begin again from byte 0 for the version the server now announces."""
        self.path.write_bytes(b"")
        self.validator, self.total = validator, total
        self.sidecar.write_text(json.dumps({"validator": validator, "total": total}))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)
        self.validator = self.total = None


def _validator(headers) -> str | None:
    """A strong validator for If-Range: the ETag unless it is weak, else Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _content_range(headers) -> tuple[int | None, int | None]:
    """(first byte, full length) of a `Content-Range: bytes a-b/n` or `bytes */n` header."""
    value = headers.get("Content-Range") or ""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", value.strip())
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def _receive(response, part: PartialDownload, dest: Path) -> None:
    """Append the response body to the part, failing with `Incomplete` when it ends early."""
    received = part.size
    next_report = received + PROGRESS_EVERY
    with open(part.path, "ab") as out:
        for block in iter(lambda: response.read(BLOCK), b""):
            out.write(block)
            received += len(block)
            if received >= next_report:
                log.info("%s: %d MiB of %s", dest.name, received >> 20,
                         f"{part.total >> 20} MiB" if part.total else "unknown size")
                next_report += PROGRESS_EVERY
    if part.total is None:
        return
    if received < part.total:
        raise Incomplete(f"connection closed after {received} of {part.total} bytes")
    if received > part.total:
        part.discard()
        raise Incomplete(f"the server sent {received} bytes after announcing {part.total}")


def _attempt(url: str, part: PartialDownload, dest: Path, timeout_s: float) -> None:
    """One request: resume the part if the server still has the same version, else restart."""
    headers = {}
    if part.resumable():
        headers = {"Range": f"bytes={part.size}-", "If-Range": part.validator}
    try:
        # Only http(s) URLs reach here (source entries of that scheme, the catalogue's weights
        # URLs or a mirror the user names): S310's file:// and custom schemes cannot.
        response = urlopen(Request(url, headers=headers), timeout=timeout_s)  # noqa: S310
    except HTTPError as exc:
        if exc.code != 416 or not headers:
            raise
        _, total = _content_range(exc.headers)
        if total is not None and total == part.size == part.total:
            return  # the part already holds every byte of this version
        log.warning("%s: the server refused to resume at byte %d (HTTP 416); starting over",
                    url, part.size)
        part.discard()
        raise Incomplete("range not satisfiable; the partial download was discarded") from None
    with response:
        validator = _validator(response.headers)
        first, total = _content_range(response.headers)
        if headers and response.status == 206 and first == part.size \
                and total == part.total and validator == part.validator:
            log.info("resuming %s at byte %d of %d", url, part.size, part.total)
        else:
            if headers:
                log.info("%s changed or cannot be resumed; downloading it from the start", url)
            length = response.headers.get("Content-Length")
            if response.status == 206:
                part.discard()
                raise Incomplete("a partial response to a request for the whole file")
            part.start(validator, int(length) if length is not None else None)
        _receive(response, part, dest)


def download(url: str, dest: Path, sha256: str | None, settings: FetchSettings) -> str:
    """Download `url` to `dest` via `dest.part`, resuming a previous partial download of the
    same version; `dest` appears only complete (every announced byte) and verified.

    Returns the file's SHA-256 (computed once, while verifying it)."""
    if dest.exists():
        log.info("already downloaded: %s", dest)
        return verify(dest, sha256, url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = PartialDownload.open(dest)
    log.info("downloading %s", url)
    _retrying(f"download of {url}", settings.retries,
              lambda: _attempt(url, part, dest, settings.timeout_s))
    try:
        digest = verify(part.path, sha256, url)
    except ChecksumError:
        part.discard()  # a corrupt part would poison every resume
        raise
    os.replace(part.path, dest)
    part.sidecar.unlink(missing_ok=True)
    log.info("downloaded and verified %s (%d bytes)", dest, dest.stat().st_size)
    return digest


def _s3_client(entry: SourceEntry, settings: FetchSettings):
    """A client whose requests botocore retries `settings.retries` times (nadir adds no retry
    loop of its own on top, so attempts never multiply)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(retries={"max_attempts": settings.retries + 1, "mode": "standard"},
                    connect_timeout=settings.timeout_s, read_timeout=settings.timeout_s,
                    **({"signature_version": UNSIGNED} if entry.anonymous else {}))
    # A session of its own: boto3's default one keeps the credentials it first found.
    return boto3.session.Session().client("s3", endpoint_url=entry.endpoint_url, config=config)


def _s3_select(objects: dict[str, str], prefix: str, wanted: Callable[[str], str | None],
               max_scenes: int | None) -> list[str]:
    """The keys the format wants; with `max_scenes`, the first N images (in key order) and the
    labels that share their names. Sidecars come with their images."""
    kinds = {k: wanted(k[len(prefix):]) for k in objects}
    images = sorted(k for k, kind in kinds.items() if kind == "image")
    labels = [k for k, kind in kinds.items() if kind == "label"]
    if max_scenes is not None:
        images = images[:max_scenes]
        stems = {Path(k).stem for k in images}
        labels = [k for k in labels if Path(k).stem in stems]
    chosen = set(images)
    stems = {(k.rpartition("/")[0], Path(k).stem) for k in images}
    sidecars = [k for k, kind in kinds.items() if kind == "sidecar" and (
        k[:-len(PAM_SUFFIX)] in chosen if k.lower().endswith(PAM_SUFFIX)
        else (k.rpartition("/")[0], Path(k).stem) in stems)]
    return sorted(images + labels + sidecars)


class S3Cache:
    """Objects of one endpoint and bucket kept under the fetch cache, each with the ETag it had
    (`etags.json`), so a later fetch copies unchanged objects from disk and downloads only new
    or changed ones. An object enters the index only once its file is complete."""

    SAVE_EVERY = 100

    def __init__(self, cache_dir: Path, endpoint: str | None, bucket: str):
        key = hashlib.sha256(f"{endpoint or 'aws'}|{bucket}".encode()).hexdigest()[:16]
        self.root = cache_dir / "s3" / key
        self.index_path = self.root / "etags.json"
        try:
            self.etags: dict[str, str] = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            self.etags = {}
        self.unsaved = 0

    def path(self, key: str) -> Path:
        return self.root / "objects" / key

    def holds(self, key: str, etag: str) -> bool:
        return self.etags.get(key) == etag and self.path(key).is_file()

    def add(self, key: str, etag: str) -> None:
        self.etags[key] = etag
        self.unsaved += 1
        if self.unsaved >= self.SAVE_EVERY:
            self.save()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.index_path.with_name(f"etags.json.partial-{os.getpid()}")
        partial.write_text(json.dumps(self.etags, sort_keys=True))
        os.replace(partial, self.index_path)
        self.unsaved = 0


def fetch_s3(entry: SourceEntry, dest: Path, wanted: Callable[[str], str | None],
             settings: FetchSettings) -> list[str]:
    """Copy the wanted objects under an s3:// prefix into `dest`, keeping their relative keys;
    objects come through the cache (`settings.cache_dir`), downloaded only when new or changed."""
    from boto3.s3.transfer import TransferConfig

    parsed = urlparse(entry.url)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = _s3_client(entry, settings)
    # botocore retries requests; s3transfer retries a body cut mid-stream: one loop each.
    transfer = TransferConfig(num_download_attempts=settings.retries + 1, use_threads=False)
    objects: dict[str, str] = {}

    def list_keys() -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=prefix):
            objects.update((o["Key"], o.get("ETag", "")) for o in page.get("Contents", [])
                           if not o["Key"].endswith("/"))

    _s3_call(f"listing {entry.url}", list_keys)
    selected = _s3_select(objects, prefix, wanted, entry.max_scenes)
    if not selected:
        raise InputError(entry.url, f"no wanted files among the {len(objects)} object(s) under "
                                    "this prefix; check the prefix and the dataset's `tiled` "
                                    "setting")
    cache = S3Cache(settings.cache_dir, entry.endpoint_url, bucket)
    reused = 0
    try:
        for n, key in enumerate(selected, start=1):
            cached = cache.path(key)
            if cache.holds(key, objects[key]):
                reused += 1
            else:
                cached.parent.mkdir(parents=True, exist_ok=True)
                part = cached.with_name(cached.name + ".part")
                _s3_call(f"download of s3://{bucket}/{key}",
                         lambda key=key, part=part: client.download_file(
                             bucket, key, str(part), Config=transfer))
                os.replace(part, cached)
                cache.add(key, objects[key])
            target = dest / key[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            _link_or_copy(str(cached), str(target))
            if n % 100 == 0 or n == len(selected):
                log.info("s3: %d/%d objects from %s (%d from the cache)", n, len(selected),
                         entry.url, reused)
    finally:
        cache.save()
    return selected


def _s3_call(what: str, action: Callable[[], None]) -> None:
    """Run one S3 action (botocore has already retried it) and turn its failures into
    NadirErrors that say what to check."""
    from boto3.exceptions import RetriesExceededError, S3TransferFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        action()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "NoSuchBucket", "403", "404", "NoSuchKey"):
            raise NadirError(f"{what}: {code} (for a public bucket, keep anonymous: true; "
                             "for a private one, set anonymous: false and AWS_* "
                             "credentials in the environment)") from None
        raise NadirError(f"{what}: {code or exc}; gave up after botocore's retries") from None
    except (BotoCoreError, RetriesExceededError, S3TransferFailedError) as exc:
        raise NadirError(f"{what}: {exc}; gave up after botocore's retries (check the "
                         "endpoint_url and that the server is up)") from None


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


NESTING_LIMIT = 3  # archives inside archives are extracted down to this depth


def _extract_one(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive, refusing members that would land outside `dest`."""
    log.info("extracting %s", archive)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                root = dest.resolve()
                for member in zf.namelist():
                    if not (dest / member).resolve().is_relative_to(root):
                        raise InputError(archive, f"member {member!r} would be written outside "
                                                  "the extraction folder")
                zf.extractall(dest)  # noqa: S202 - every member was checked just above
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise InputError(archive, f"refused: {exc}") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InputError(archive, f"not a readable archive ({exc}); it is corrupt or "
                                  "truncated: download or copy it again") from None


def extract(archive: Path, dest: Path) -> None:
    """Extract an archive, and archives found inside it, into `dest`.

    Everything goes to `<dest>.partial` first and takes its place only once all of it is
    extracted, so a corrupt or truncated archive never leaves a folder that looks complete.
    An inner archive is extracted into a folder named after it, and then removed.
    """
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _extract_one(archive, partial)
        for depth in range(1, NESTING_LIMIT + 1):
            inner = sorted(p for p in partial.rglob("*") if is_archive(p))
            if not inner:
                break
            if depth == NESTING_LIMIT:
                raise InputError(archive, f"archives nested more than {NESTING_LIMIT} deep "
                                          f"(e.g. {inner[0].relative_to(partial)}); unpack it "
                                          "by hand")
            for path in inner:
                suffix = next(x for x in ARCHIVE_SUFFIXES if path.name.lower().endswith(x))
                _extract_one(path, path.with_name(path.name[:-len(suffix)]))
                path.unlink()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if dest.exists():
        shutil.copytree(partial, dest, dirs_exist_ok=True)
        shutil.rmtree(partial)
    else:
        os.replace(partial, dest)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def archive_folder(archive: Path) -> Path:
    """The folder an archive is extracted into: beside it, named after it (`part1.zip` ->
    `part1/`), as archives inside archives are, so that its name stays in every path."""
    suffix = next(x for x in ARCHIVE_SUFFIXES if archive.name.lower().endswith(x))
    return archive.with_name(archive.name[:-len(suffix)])


def _skipped(relative: Path) -> bool:
    """Hidden files and macOS resource forks (`__MACOSX/._part1.zip` is no zip)."""
    return any(p.startswith(".") or p == "__MACOSX" for p in relative.parts)


def place(path: Path, dest: Path) -> None:
    """Put a placed or downloaded path into `dest`: an archive is extracted into a folder named
    after it; a folder is taken as its contents, its archives extracted as if each were listed
    and its other files linked (or copied); a file is linked."""
    if path.is_dir():
        # os.walk follows linked folders: a data folder may link to another disk
        files = sorted(Path(top) / name for top, _, names in os.walk(path, followlinks=True)
                       for name in names)
        for item in files:
            relative = item.relative_to(path)
            if _skipped(relative):
                continue
            if is_archive(item):
                extract(item, archive_folder(dest / relative))
            elif item.is_file():
                (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(str(item), str(dest / relative))
    elif is_archive(path):
        extract(path, archive_folder(dest / path.name))
    else:
        dest.mkdir(parents=True, exist_ok=True)
        _link_or_copy(str(path), str(dest / path.name))


def fetch_s3_archive(entry: SourceEntry, dest: Path, settings: FetchSettings) -> None:
    """An s3:// URL naming one archive object (RarePlanes' tarballs): brought through the cache
    as `fetch_s3` brings objects, then extracted like a placed archive."""
    if entry.max_scenes is not None:
        raise InputError(entry.url, "max_scenes takes the first images of an s3:// prefix; this "
                                    "entry names one archive: remove max_scenes")
    prefix, _, name = entry.url.rpartition("/")
    staging = dest.with_name(dest.name + ".download")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        fetch_s3(SourceEntry(prefix + "/", endpoint_url=entry.endpoint_url,
                             anonymous=entry.anonymous), staging,
                 lambda relative: "image" if relative == name else None, settings)
    except InputError:
        raise InputError(entry.url, f"no object {name!r} under {prefix}/; check the URL") \
            from None
    try:
        place(staging / name, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def obtain(entry: SourceEntry, dest: Path, dataset_format: str,
           wanted: Callable[[str], str | None], settings: FetchSettings) -> dict:
    """Bring one source entry into `dest`; returns what was fetched, for the manifest."""
    record = {"url": entry.url, "split": entry.split}
    if entry.scheme == "s3" and entry.url.lower().endswith(ARCHIVE_SUFFIXES):
        fetch_s3_archive(entry, dest, settings)
        return record
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
            record["sha256"] = verify(path, entry.sha256, str(path))
    place(path, dest)
    return record


# DOTA's label archives come in variants beside the oriented labels nadir reads: horizontal-box
# copies (v1.0's `*reclabelTxt*`, v1.5's `*_hbb*`) and the labels of each version, in folders
# and archives named by it (`labelTxt-v1.0/`, `DOTA-v1.5_train.zip`).
HORIZONTAL_COPY = re.compile(r"reclabel|(?:^|[^a-z0-9])hbb(?:$|[^a-z0-9])", re.IGNORECASE)
VERSION_TAG = re.compile(r"(?:^|[^a-z0-9])v(\d+\.\d+)(?:$|[^0-9])", re.IGNORECASE)


def label_variant(folders: list[str], version: str | None) -> str | None:
    """Why a DOTA label file in these folders is set aside (None: it is read): a horizontal-box
    copy, or the labels of another version than the configured one."""
    if any(HORIZONTAL_COPY.search(folder) for folder in folders):
        return "horizontal-box copies (DOTA's reclabel/_hbb labels), not the oriented labels"
    for folder in folders:
        tag = VERSION_TAG.search(folder)
        if tag and version and f"v{tag.group(1)}" != version:
            return f"labels of DOTA v{tag.group(1)}, not of the configured version {version}"
    return None


def classify(relative: str, dataset_format: str, tiled: bool = True,
             version: str | None = None) -> str | None:
    """Whether a file (path relative to its source entry) is an image, a label, an image's
    georeferencing sidecar, a label variant set aside (`label_variant`), or none of these."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    name = parts[-1].lower()
    if name.endswith(".part"):
        return None
    suffix = Path(name).suffix
    folders = parts[:-1]
    sidecar = sidecar_image_stem(name) is not None
    if dataset_format == "dota":
        if suffix in IMAGE_SUFFIXES:
            return "image"
        if sidecar:
            return "sidecar"
        if suffix == ".txt":
            return "variant" if label_variant(folders, version) else "label"
    elif dataset_format == "xview":
        if suffix in (".tif", ".tiff"):
            return "image"
        if sidecar:
            return "sidecar"
        if suffix in (".geojson", ".json"):
            return "label"
    elif dataset_format == "rareplanes":
        image_dir, label_dir = (("PS-RGB_tiled", "geojson_aircraft_tiled") if tiled
                                else ("PS-RGB", "geojson_aircraft"))
        if image_dir in folders and suffix in IMAGE_SUFFIXES:
            return "image"
        if image_dir in folders and sidecar:
            return "sidecar"
        if label_dir in folders and suffix == ".geojson":
            return "label"
    return None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (DOTA's Drive holds a copy of train part1.zip)."""
    return a.stat().st_size == b.stat().st_size and sha256_of(a) == sha256_of(b)


class Scan:
    """What a walk over the fetched entries found: scenes by name, labels by (split, name),
    sidecars by folder and image stem, and what was set aside."""

    def __init__(self, root: Path, dataset_format: str, tiled: bool, version: str | None):
        self.root, self.format, self.tiled, self.version = root, dataset_format, tiled, version
        self.scenes: dict[str, dict] = {}
        self.labels: dict[tuple, str] = {}
        self.label_files: list[str] = []
        self.sidecars: dict[tuple[Path, str], list[Path]] = {}  # by folder and image stem
        self.variants: dict[str, dict] = {}  # folder -> {"files": n, "reason": ...}
        self.copies: list[dict] = []  # identical copies of an image or label, set aside

    def add(self, entry: SourceEntry, folder: Path, path: Path) -> None:
        within = path.relative_to(folder).as_posix()
        kind = classify(within, self.format, self.tiled, self.version)
        relative = path.relative_to(self.root).as_posix()
        if kind in ("image", "label", "sidecar"):  # its path reaches the manifest and commands
            check_relative_path(relative, path, "file name")
        if kind == "image":
            first = self.scenes.get(path.stem)
            if first is None:
                self.scenes[path.stem] = {"scene": path.stem, "split": entry.split,
                                          "image": relative}
            elif not self._copy_of(first["image"], first["split"], path, entry.split):
                raise InputError(path, f"scene name {path.stem!r} is also used by "
                                       f"{first['image']}; scene names (image file names "
                                       "without suffix) must be unique")
        elif kind == "sidecar":
            key = (path.parent, sidecar_image_stem(path.name))
            self.sidecars.setdefault(key, []).append(path)
        elif kind == "variant":
            group = Path(relative).parent.as_posix()
            reason = label_variant(Path(within).parent.parts, self.version)
            self.variants.setdefault(group, {"folder": group, "files": 0, "reason": reason})
            self.variants[group]["files"] += 1
        elif kind == "label" and self.format == "xview":
            self.label_files.append(relative)
        elif kind == "label":
            key = (entry.split, path.stem)
            if key not in self.labels:
                self.labels[key] = relative
            elif not self._copy_of(self.labels[key], entry.split, path, entry.split):
                raise InputError(path, f"a second label file for {path.stem!r} (the first "
                                       f"is {self.labels[key]})")

    def _copy_of(self, first: str, first_split: str | None, path: Path,
                 split: str | None) -> bool:
        """Set `path` aside when it is an identical copy of `first` from the same split."""
        if first_split != split or not _same_file(self.root / first, path):
            return False
        self.copies.append({"file": path.relative_to(self.root).as_posix(), "same_as": first})
        return True

    def sidecars_of(self, image: Path) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix()
                      for p in self.sidecars.get((image.parent, image.stem), [])
                      if is_sidecar_of(p.name, image.name))


def scan(root: Path, entries: list[tuple[SourceEntry, Path]], dataset_format: str,
         tiled: bool, version: str | None = None, max_raster_values: int | None = None) -> dict:
    """Pair images and labels by file name (per split), attach each image's sidecars and read
    every image's header (its sidecar's georeferencing included; see `image_header`)."""
    found = Scan(root, dataset_format, tiled, version)
    for entry, folder in entries:  # shallower first: a copy sits deeper than its original
        for path in sorted((p for p in folder.rglob("*") if p.is_file()),
                           key=lambda p: (len(p.parts), p)):
            found.add(entry, folder, path)
    ordered = [found.scenes[name] for name in sorted(found.scenes)]
    for n, scene in enumerate(ordered, start=1):
        if dataset_format != "xview":
            scene["label"] = found.labels.pop((scene["split"], scene["scene"]), None)
        scene["sidecars"] = found.sidecars_of(root / scene["image"])
        scene.update(image_header(root / scene["image"], max_raster_values))
        if n % 100 == 0 or n == len(ordered):
            log.info("read image headers: %d/%d", n, len(ordered))
    for variant in found.variants.values():
        log.warning("set aside %d label file(s) under %s: %s", variant["files"],
                    variant["folder"], variant["reason"])
    if found.copies:
        log.warning("set aside %d identical copies of files already fetched (e.g. %s, a copy "
                    "of %s)", len(found.copies), found.copies[0]["file"],
                    found.copies[0]["same_as"])
    return {"scenes": ordered, "label_files": sorted(found.label_files),
            "labels_without_image": sorted(found.labels.values()),
            "set_aside": {"label_variants": sorted(found.variants.values(),
                                                   key=lambda v: v["folder"]),
                          "copies": found.copies}}


def fetch_dataset(name: str, spec: dict, files_dir: Path, settings: FetchSettings,
                  max_raster_values: int | None = None) -> dict:
    """Fetch every source entry of a dataset into `files_dir` and return its scene manifest
    (images larger than `max_raster_values` are refused: `nadir.rasters`)."""
    dataset_format, tiled = spec["format"], spec.get("tiled", True)
    version = spec.get("version") if dataset_format == "dota" else None
    files_dir.mkdir(parents=True, exist_ok=True)
    entries, fetched = [], []
    for i, raw in enumerate(spec["source"]):
        entry = SourceEntry(**raw)
        folder = files_dir / f"{i:02d}-{entry.split or 'all'}"
        log.info("source %d/%d: %s", i + 1, len(spec["source"]), entry.url)
        fetched.append(obtain(entry, folder, dataset_format,
                              lambda rel: classify(rel, dataset_format, tiled, version),
                              settings))
        entries.append((entry, folder))
    manifest = {"dataset": name, "format": dataset_format, "version": spec.get("version"),
                "sources": fetched, **scan(files_dir, entries, dataset_format, tiled, version,
                                           max_raster_values)}
    if not manifest["scenes"]:
        raise InputError(files_dir, f"no {dataset_format} images found in the sources "
                                    f"{[e.url for e, _ in entries]}{LOOKED_FOR[dataset_format]}"
                                    f". {WHERE_TO_GET[dataset_format]}")
    log.info("%s: %d scenes, %d label files without an image", name, len(manifest["scenes"]),
             len(manifest["labels_without_image"]))
    return manifest


def write_scene_manifest(manifest: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def read_scene_manifest(path: Path) -> dict:
    """A scene manifest read back (from storage another job or person may have written): every
    scene name and every path in it must follow the name rule (`nadir.names`), since they
    become the chip and index jobs' inputs and command arguments."""
    try:
        manifest = json.loads(Path(path).read_text())
        scenes = manifest["scenes"]
        for scene in scenes:
            check_name(scene["scene"], path, "scene name")
            check_relative_path(scene["image"], path, f"image of scene {scene['scene']!r}")
            if scene.get("label") is not None:
                check_relative_path(scene["label"], path, f"label of scene {scene['scene']!r}")
            for sidecar in scene.get("sidecars", []):
                check_relative_path(sidecar, path, f"sidecar of scene {scene['scene']!r}")
        for key in ("label_files", "labels_without_image"):
            for relative in manifest.get(key, []):
                check_relative_path(relative, path, f"file in {key}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a readable scene manifest ({exc!r}); rerun the fetch "
                               "job") from None
    return manifest
