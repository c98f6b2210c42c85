"""The fetch stage: bring a dataset's files into one folder and describe them in a scene manifest.

A dataset's `source` lists entries, each a local path (folder, file or archive the user placed),
an http(s):// URL, or an s3://bucket/prefix/ (anonymous by default, for public buckets).
- Downloads are resumable (HTTP Range with If-Range on the version a `.part` file in the cache
  holds, so two versions are never spliced), retried with exponential back-off, complete only at
  the length the server announced, checked against `sha256` when given, and renamed to their
  final name only once complete and verified, so a partial download never looks complete.
  One process at a time works on a cache entry (a lock file beside it); each writes its own
  part file. Redirects never go from https to http, nor from a public host to a private
  address; a body may not exceed `max_download_bytes`. Pretrained weights use the same
  downloader.
- s3:// objects come through the cache too, keyed by ETag; botocore does the retrying.
- Archives (.zip, .tar, .tar.gz, .tgz, and archives inside them) are extracted into a folder
  named after them, within caps on members, bytes and expansion ratio; a folder is taken as its
  contents: its files are linked or copied and its archives extracted as if each were listed
  (DOTA's Drive folders of part zips).
- Images come with their georeferencing sidecars (`<image>.aux.xml`, world files), which
  nadir.raster.georeferencing reads.
- Untrusted names (archive members, S3 keys) land only inside their folder
  (`nadir.core.containment`); URLs are recorded only in `nadir.storage.urls.redact`'s form.
- Every entry lands in its own sub-folder `<n>-<split>/` of the output folder; the manifest then
  lists each scene (image, label, sidecars, split, size, georeferencing) with paths relative to
  it, and what was set aside: label variants (DOTA's horizontal-box copies, labels of another
  version) and identical copies of an image.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import HTTPRedirectHandler, Request, build_opener

from nadir.core.containment import contained
from nadir.core.errors import InputError, NadirError
from nadir.core.hashing import sha256_of
from nadir.core.names import check_name, check_relative_path
from nadir.datasets.tables import image_header
from nadir.raster.georeferencing import (
    IMAGE_SUFFIXES,
    PAM_SUFFIX,
    is_sidecar_of,
    sidecar_image_stem,
)
from nadir.storage.urls import redact, redirect_refusal, resolve

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


@functools.cache
def fetch_defaults() -> dict:
    """The `fetch` section's defaults, read from the config schema (their one home)."""
    from nadir.core.schema import section_defaults

    return section_defaults("fetch")


def _default(name: str, kind: Callable = lambda value: value):
    return field(default_factory=lambda: kind(fetch_defaults()[name]))


@dataclass(frozen=True)
class FetchSettings:
    """The config's `fetch` section (defaults from the schema)."""

    cache_dir: Path = _default("cache_dir", Path)
    retries: int = _default("retries")
    timeout_s: float = _default("timeout_s")
    max_download_bytes: int = _default("max_download_bytes")
    max_extracted_bytes: int = _default("max_extracted_bytes")
    max_expansion_ratio: float = _default("max_expansion_ratio")
    max_archive_members: int = _default("max_archive_members")

    @classmethod
    def from_config(cls, fetch: dict) -> FetchSettings:
        return cls(**{**fetch, "cache_dir": Path(fetch.get("cache_dir") or
                                                 fetch_defaults()["cache_dir"])})


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


@contextlib.contextmanager
def cache_entry_lock(entry: Path) -> Iterator[None]:
    """Hold `<entry>.lock` while this process fetches `entry`: a second process (another job,
    another dataset's fetch, a second controller) waits, then finds the finished entry
    instead of writing the same file at the same time. The lock file is removed on release;
    a waiter that was granted a removed file's lock tries again with the new one."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = entry.with_name(entry.name + ".lock")
    while True:
        handle = open(lock, "a+b")  # held until the context ends
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s: another process is fetching it; waiting for it to finish", entry)
                fcntl.flock(handle, fcntl.LOCK_EX)
            if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass  # removed by the holder we waited for: lock the next file
        except OSError as exc:
            handle.close()
            raise NadirError(f"{lock}: cannot be locked ({exc.strerror}); put fetch.cache_dir "
                             "on a file system with file locks (a local disk)") from None
        handle.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


@dataclass
class PartialDownload:
    """This process's part file (`<name>.part-<pid>-<random>`) and what identifies the version
    it holds (`<part>.json`): the ETag or Last-Modified and the full length the server
    announced. A part is resumed only with `If-Range` on that validator, so two versions of a
    file are never spliced together."""

    path: Path
    validator: str | None = None
    total: int | None = None

    @classmethod
    def claim(cls, dest: Path) -> PartialDownload:
        """A part of this process's own for `dest`, continuing the newest part an earlier
        process left (so a download resumes across runs; older ones are removed). Called with
        `dest`'s lock held: no other process writes any of them."""
        part = cls(dest.with_name(f"{dest.name}.part-{os.getpid()}-{secrets.token_hex(4)}"))
        left = []
        for path in dest.parent.glob(glob.escape(dest.name) + ".part*"):
            with contextlib.suppress(OSError):
                if not path.name.endswith(".json"):
                    left.append((path.stat().st_mtime_ns, path))
        left.sort()
        for _, old in left[:-1]:
            cls(old).discard()
        if left:
            previous = cls(left[-1][1])
            try:
                state = json.loads(previous.sidecar.read_text())
                validator, total = state["validator"], state["total"]
                os.replace(previous.path, part.path)
            except (OSError, ValueError, KeyError, TypeError):
                previous.discard()  # a part of unknown version cannot be resumed safely
            else:
                part.validator, part.total = validator, total
                part.save_state()
            previous.sidecar.unlink(missing_ok=True)
        return part

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def resumable(self) -> bool:
        return self.validator is not None and self.total is not None and 0 < self.size

    def save_state(self) -> None:
        self.sidecar.write_text(json.dumps({"validator": self.validator, "total": self.total}))

    def start(self, validator: str | None, total: int | None) -> None:
        """Begin again from byte 0 for the version the server now announces."""
        self.path.write_bytes(b"")
        self.validator, self.total = validator, total
        self.save_state()

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


def _content_length(headers) -> int | None:
    """The announced body length; None when absent or not a number (then the body is read up
    to `max_download_bytes`)."""
    value = (headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _too_large(url: str, settings: FetchSettings, announced: int | None) -> NadirError:
    what = (f"announces {announced} bytes" if announced is not None
            else "sends a body without Content-Length")
    return NadirError(f"download of {redact(url)}: the server {what}, more than "
                      f"fetch.max_download_bytes ({settings.max_download_bytes}); if the file "
                      "is genuine, raise that key")


def _receive(response, part: PartialDownload, dest: Path, url: str,
             settings: FetchSettings) -> None:
    """Append the response body to the part, failing with `Incomplete` when it ends early;
    never writes a byte past the announced length, or past `max_download_bytes` when none was
    announced."""
    received = part.size
    limit = part.total if part.total is not None else settings.max_download_bytes
    next_report = received + PROGRESS_EVERY
    with open(part.path, "ab") as out:
        for block in iter(lambda: response.read(BLOCK), b""):
            received += len(block)
            if received > limit:
                part.discard()
                if part.total is None:
                    raise _too_large(url, settings, announced=None)
                raise Incomplete(f"the server sent more than the {limit} bytes it announced")
            out.write(block)
            if received >= next_report:
                log.info("%s: %d MiB of %s", dest.name, received >> 20,
                         f"{part.total >> 20} MiB" if part.total else "unknown size")
                next_report += PROGRESS_EVERY
    if part.total is not None and received < part.total:
        raise Incomplete(f"connection closed after {received} of {part.total} bytes")


class _CheckedRedirects(HTTPRedirectHandler):
    """Follows a redirect only where `nadir.storage.urls.redirect_refusal` allows it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        refusal = redirect_refusal(req.full_url, newurl)
        if refusal:
            raise NadirError(f"download of {redact(req.full_url)}: the server redirects to "
                             f"{redact(newurl)}, refused because {refusal}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _attempt(url: str, part: PartialDownload, dest: Path, settings: FetchSettings) -> None:
    """One request: resume the part if the server still has the same version, else restart."""
    headers = {}
    shown = redact(url)
    if part.resumable():
        headers = {"Range": f"bytes={part.size}-", "If-Range": part.validator}
    # Only http(s) URLs reach here (`download` checks), and redirects pass _CheckedRedirects.
    request = Request(url, headers=headers)  # noqa: S310
    try:
        response = build_opener(_CheckedRedirects).open(request, timeout=settings.timeout_s)
    except HTTPError as exc:
        if exc.code != 416 or not headers:
            raise
        _, total = _content_range(exc.headers)
        if total is not None and total == part.size == part.total:
            return  # the part already holds every byte of this version
        log.warning("%s: the server refused to resume at byte %d (HTTP 416); starting over",
                    shown, part.size)
        part.discard()
        raise Incomplete("range not satisfiable; the partial download was discarded") from None
    with response:
        validator = _validator(response.headers)
        first, total = _content_range(response.headers)
        if headers and response.status == 206 and first == part.size \
                and total == part.total and validator == part.validator:
            log.info("resuming %s at byte %d of %d", shown, part.size, part.total)
        else:
            if headers:
                log.info("%s changed or cannot be resumed; downloading it from the start", shown)
            length = _content_length(response.headers)
            if response.status == 206:
                part.discard()
                raise Incomplete("a partial response to a request for the whole file")
            if length is not None and length > settings.max_download_bytes:
                part.discard()
                raise _too_large(url, settings, announced=length)
            part.start(validator, length)
        _receive(response, part, dest, url, settings)


def download(url: str, dest: Path, sha256: str | None, settings: FetchSettings) -> str:
    """Download `url` to `dest` via this process's part file, resuming a previous partial
    download of the same version; `dest` appears only complete (its size the announced length)
    and verified. One process at a time: others wait, then find `dest` done.

    Returns the file's SHA-256 (computed once, while verifying it)."""
    shown = redact(url)
    if urlparse(url).scheme not in ("http", "https"):
        raise NadirError(f"download of {shown}: only http(s) URLs are downloaded")
    with cache_entry_lock(dest):
        if dest.exists():
            log.info("already downloaded: %s", dest)
            return verify(dest, sha256, shown)
        part = PartialDownload.claim(dest)
        log.info("downloading %s", shown)
        _retrying(f"download of {shown}", settings.retries,
                  lambda: _attempt(url, part, dest, settings))
        if part.total is not None and part.size != part.total:
            size, total = part.size, part.total
            part.discard()
            raise NadirError(f"download of {shown}: the file holds {size} bytes, the server "
                             f"announced {total}; discarded, fetch it again")
        try:
            digest = verify(part.path, sha256, shown)
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
    or changed ones. An object enters the index only once its file is complete. Use it with
    the bucket's lock held (`locked`): one process at a time per bucket cache."""

    SAVE_EVERY = 100

    def __init__(self, cache_dir: Path, endpoint: str | None, bucket: str):
        key = hashlib.sha256(f"{endpoint or 'aws'}|{bucket}".encode()).hexdigest()[:16]
        self.bucket = bucket
        self.root = cache_dir / "s3" / key
        self.index_path = self.root / "etags.json"
        self.etags: dict[str, str] = {}
        self.unsaved = 0

    @contextlib.contextmanager
    def locked(self) -> Iterator[S3Cache]:
        with cache_entry_lock(self.root):
            try:
                self.etags = json.loads(self.index_path.read_text())
            except (OSError, ValueError):
                self.etags = {}
            try:
                yield self
            finally:
                self.save()

    def path(self, key: str) -> Path:
        """Where an object's copy lives: its key under `objects/`, which it may not leave."""
        return contained(self.root / "objects", key, f"key {key!r}", f"s3://{self.bucket}")

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
    objects come through the cache (`settings.cache_dir`), downloaded only when new or changed.
    Every key must land inside `dest` and inside the cache (checked before anything is
    written): a listing is untrusted input."""
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
    targets = {key: (cache.path(key), contained(dest, key[len(prefix):], f"key {key!r}",
                                                f"s3://{bucket}"))
               for key in selected}
    reused = 0
    with cache.locked():
        for n, key in enumerate(selected, start=1):
            cached, target = targets[key]
            try:
                if cache.holds(key, objects[key]):
                    reused += 1
                else:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    part = cached.with_name(f"{cached.name}.part-{os.getpid()}")
                    _s3_call(f"download of s3://{bucket}/{key}",
                             lambda key=key, part=part: client.download_file(
                                 bucket, key, str(part), Config=transfer))
                    os.replace(part, cached)
                    cache.add(key, objects[key])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                _link_or_copy(str(cached), str(target))
            except OSError as exc:  # a name the file system cannot hold (too long, ...)
                raise InputError(f"s3://{bucket}", f"key {key!r} cannot be written to "
                                                   f"{target} ({exc.strerror or exc})") from None
            if n % 100 == 0 or n == len(selected):
                log.info("s3: %d/%d objects from %s (%d from the cache)", n, len(selected),
                         entry.url, reused)
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


class Expansion:
    """What one extraction (an archive and the archives inside it) may write: at most
    `fetch.max_archive_members` members, `fetch.max_extracted_bytes` bytes, and
    `fetch.max_expansion_ratio` bytes per byte of the outer archive. Each member is counted
    before it is written, so a compression bomb stops at the limit, not after filling the
    disk."""

    def __init__(self, archive: Path, settings: FetchSettings):
        self.archive, self.settings = archive, settings
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.members = self.written = 0

    def admit(self, archive: Path, name: str, size: int) -> None:
        """Count member `name` of `archive` (`size` bytes) before it is written."""
        settings = self.settings
        self.members += 1
        self.written += size
        if self.members > settings.max_archive_members:
            raise InputError(archive, f"member {name!r} is one more than "
                                      f"fetch.max_archive_members ({settings.max_archive_members})"
                                      "; if the archive is genuine, raise that key")
        if self.written > settings.max_extracted_bytes:
            raise InputError(archive, f"member {name!r} would take the extracted bytes past "
                                      f"fetch.max_extracted_bytes ({settings.max_extracted_bytes})"
                                      "; if the archive is genuine, raise that key")
        if self.written > settings.max_expansion_ratio * self.archive_bytes:
            raise InputError(archive, f"member {name!r} would expand {self.archive.name} "
                                      f"({self.archive_bytes} bytes) past "
                                      f"fetch.max_expansion_ratio ({settings.max_expansion_ratio}"
                                      " times): a compression bomb, or, if the archive is "
                                      "genuine, raise that key")


def _extract_zip(archive: Path, dest: Path, expansion: Expansion) -> None:
    """Members one by one, each checked (place, count, declared size) before it is written.
    zipfile never returns more than a member's declared size (a member that holds more fails
    its CRC check), so counting declared sizes bounds what is written."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            what = f"member {info.filename!r}"
            target = contained(dest, info.filename, what, archive, folder_itself=info.is_dir())
            expansion.admit(archive, info.filename, info.file_size)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as source:
                _write_member(source, target, what, archive)


def _write_member(source, target: Path, what: str, archive: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            shutil.copyfileobj(source, out, BLOCK)
    except OSError as exc:
        if isinstance(exc, (zipfile.BadZipFile, EOFError)):
            raise
        raise InputError(archive, f"{what} cannot be written to {target} ({exc.strerror or exc})"
                                  ) from None


def _extract_tar(archive: Path, dest: Path, expansion: Expansion) -> None:
    """Members one by one as the stream is read, each checked (place, count, size) before it
    is written; tar's `data` filter also refuses links that point out, devices and absolute
    or `..` link targets."""
    with tarfile.open(archive) as tf:
        for member in tf:
            what = f"member {member.name!r}"
            contained(dest, member.name, what, archive, folder_itself=member.isdir())
            expansion.admit(archive, member.name, member.size if member.isfile() else 0)
            try:
                tf.extract(member, dest, filter="data")
            except tarfile.FilterError as exc:
                raise InputError(archive, f"{what} refused: {exc}") from None
            except OSError as exc:
                raise InputError(archive, f"{what} cannot be written under {dest} "
                                          f"({exc.strerror or exc})") from None


def _extract_one(archive: Path, dest: Path, expansion: Expansion) -> None:
    """Extract a zip or tar archive, refusing members that would land outside `dest`."""
    log.info("extracting %s", archive)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, dest, expansion)
        else:
            _extract_tar(archive, dest, expansion)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InputError(archive, f"not a readable archive ({exc}); it is corrupt or "
                                  "truncated: download or copy it again") from None


def extract(archive: Path, dest: Path, settings: FetchSettings | None = None) -> None:
    """Extract an archive, and archives found inside it, into `dest`, within the caps of
    `settings` (`Expansion`).

    Everything goes to `<dest>.partial` first and takes its place only once all of it is
    extracted, so a corrupt or truncated archive never leaves a folder that looks complete.
    An inner archive is extracted into a folder named after it, and then removed. Every
    member must land inside the folder (`nadir.core.containment`): nothing outside it is created,
    changed or removed.
    """
    expansion = Expansion(archive, settings or FetchSettings())
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _extract_one(archive, partial, expansion)
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
                _extract_one(path, path.with_name(path.name[:-len(suffix)]), expansion)
                path.unlink()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if dest.exists():
        # Links stay links: followed, one pointing to a folder above it would be copied into
        # itself over and over.
        shutil.copytree(partial, dest, symlinks=True, dirs_exist_ok=True)
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


def _folder_files(root: Path) -> list[Path]:
    """Every file under a folder, following linked folders (a data folder may link to another
    disk) but entering each real folder once: a link back up the tree (`a/loop -> ..`) would
    otherwise be walked until the path grows too long."""
    seen: set[str] = set()
    files = []
    for top, folders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        files.extend(Path(top) / name for name in names)
    return sorted(files)


def place(path: Path, dest: Path, settings: FetchSettings) -> None:
    """Put a placed or downloaded path into `dest`: an archive is extracted into a folder named
    after it; a folder is taken as its contents, its archives extracted as if each were listed
    and its other files linked (or copied); a file is linked."""
    if path.is_dir():
        for item in _folder_files(path):
            relative = item.relative_to(path)
            if _skipped(relative):
                continue
            if is_archive(item):
                extract(item, archive_folder(dest / relative), settings)
            elif item.is_file():
                (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(str(item), str(dest / relative))
    elif is_archive(path):
        extract(path, archive_folder(dest / path.name), settings)
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
        place(staging / name, dest, settings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def obtain(entry: SourceEntry, dest: Path, dataset_format: str,
           wanted: Callable[[str], str | None], settings: FetchSettings) -> dict:
    """Bring one source entry into `dest`; returns what was fetched, for the manifest."""
    record = {"url": redact(entry.url), "split": entry.split}
    if entry.scheme == "s3" and entry.url.lower().endswith(ARCHIVE_SUFFIXES):
        fetch_s3_archive(entry, dest, settings)
        return record
    if entry.scheme == "s3":
        record["objects"] = len(fetch_s3(entry, dest, wanted, settings))
        return record
    if entry.scheme in ("http", "https"):
        name = Path(urlparse(entry.url).path).name or "download"
        key = hashlib.sha256(entry.url.encode()).hexdigest()[:16]
        path = contained(settings.cache_dir / key, name, f"file name {name!r}",
                         record["url"])
        record["sha256"] = download(entry.url, path, entry.sha256, settings)
    else:
        path = Path(entry.url).expanduser()
        if not path.exists():
            raise InputError(path, f"not found: this {dataset_format} source entry is expected "
                                   f"at this path. {WHERE_TO_GET[dataset_format]}")
        if path.is_file():
            record["sha256"] = verify(path, entry.sha256, str(path))
    place(path, dest, settings)
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
    (images larger than `max_raster_values` are refused: `nadir.raster.opener`)."""
    dataset_format, tiled = spec["format"], spec.get("tiled", True)
    version = spec.get("version") if dataset_format == "dota" else None
    files_dir.mkdir(parents=True, exist_ok=True)
    entries, fetched = [], []
    for i, raw in enumerate(spec["source"]):
        # The workflow hands URLs over in their recorded form (nadir.storage.urls): resolved here.
        entry = SourceEntry(**{**raw, "url": resolve(raw["url"])})
        folder = files_dir / f"{i:02d}-{entry.split or 'all'}"
        log.info("source %d/%d: %s", i + 1, len(spec["source"]), redact(entry.url))
        fetched.append(obtain(entry, folder, dataset_format,
                              lambda rel: classify(rel, dataset_format, tiled, version),
                              settings))
        entries.append((entry, folder))
    manifest = {"dataset": name, "format": dataset_format, "version": spec.get("version"),
                "sources": fetched, **scan(files_dir, entries, dataset_format, tiled, version,
                                           max_raster_values)}
    if not manifest["scenes"]:
        raise InputError(files_dir, f"no {dataset_format} images found in the sources "
                                    f"{[redact(e.url) for e, _ in entries]}"
                                    f"{LOOKED_FOR[dataset_format]}. {WHERE_TO_GET[dataset_format]}")
    log.info("%s: %d scenes, %d label files without an image", name, len(manifest["scenes"]),
             len(manifest["labels_without_image"]))
    return manifest


def write_scene_manifest(manifest: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def read_scene_manifest(path: Path) -> dict:
    """A scene manifest read back (from storage another job or person may have written): every
    scene name and every path in it must follow the name rule (`nadir.core.names`), since they
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
