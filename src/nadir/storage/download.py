"""HTTP downloads that are resumable, bounded, verified and never seen half-done.

Downloads are resumable (HTTP Range with If-Range on the version a part file in the cache
holds, so two versions are never spliced), retried with exponential back-off, complete only at
the length the server announced, checked against a `sha256` when given, and renamed to their
final name only once complete and verified, so a partial download never looks complete. One
process at a time works on a cache entry (a lock file beside it); each writes its own part
file. Redirects never go from https to http, nor from a public host to a private address
(`nadir.storage.urls.redirect_refusal`); a body may not exceed `max_download_bytes`. Dataset
sources and pretrained weights use the same downloader.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import HTTPRedirectHandler, Request, build_opener

from nadir.core.errors import InputError, NadirError
from nadir.core.hashing import sha256_of
from nadir.core.schema import default_field
from nadir.storage.urls import redact, redirect_refusal

log = logging.getLogger(__name__)

BLOCK = 1 << 20
PROGRESS_EVERY = 256 << 20


@dataclass(frozen=True)
class FetchSettings:
    """How files are downloaded and archives extracted: the config's `fetch` section."""

    cache_dir: Path = default_field("fetch", "cache_dir", kind=Path)
    retries: int = default_field("fetch", "retries")
    timeout_s: float = default_field("fetch", "timeout_s")
    max_download_bytes: int = default_field("fetch", "max_download_bytes")
    max_extracted_bytes: int = default_field("fetch", "max_extracted_bytes")
    max_expansion_ratio: float = default_field("fetch", "max_expansion_ratio")
    max_archive_members: int = default_field("fetch", "max_archive_members")

    @classmethod
    def from_config(cls, fetch: dict) -> FetchSettings:
        """From the config's `fetch` section (what it leaves out: the schema's defaults)."""
        return cls(**{k: Path(v) if k == "cache_dir" else v for k, v in fetch.items()})


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


def open_url(url: str, headers: dict | None = None, timeout_s: float = 30.0):
    """A response for an http(s) URL (a GET with `headers`), redirects checked as downloads
    check them."""
    if urlparse(url).scheme not in ("http", "https"):
        raise NadirError(f"{redact(url)}: only http(s) URLs are read")
    # The scheme is http(s), checked above: urllib opens no file:// or other scheme here.
    request = Request(url, headers=headers or {})  # noqa: S310
    return build_opener(_CheckedRedirects).open(request, timeout=timeout_s)
