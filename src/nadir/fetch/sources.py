"""Bringing one source entry of a dataset into its folder: a placed path, a URL, an S3 prefix or
object, or the generated sample.

- Downloads go through the cache (`nadir.storage.download`); s3:// objects too, keyed by ETag,
  botocore doing the retrying.
- Archives are extracted into a folder named after them (`nadir.fetch.archives`); a folder is
  taken as its contents: its files are linked or copied and its archives extracted as if each
  were listed (DOTA's Drive folders of part zips).
- Untrusted names (archive members, S3 keys) land only inside their folder
  (`nadir.core.containment`); URLs are recorded only in `nadir.storage.urls.redact`'s form.
- The sample is generated in DOTA's layout (`nadir.datasets.sample`), one folder per split, so
  that it is scanned, indexed and scored as any DOTA source.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from nadir.core.containment import contained
from nadir.core.errors import InputError, NadirError
from nadir.core.schema import default_field
from nadir.datasets import sample
from nadir.fetch.archives import ARCHIVE_SUFFIXES, extract, is_archive
from nadir.raster.georeferencing import PAM_SUFFIX
from nadir.storage import s3 as s3_storage
from nadir.storage.download import FetchSettings, cache_entry_lock, download, verify
from nadir.storage.urls import redact

log = logging.getLogger(__name__)

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
    """One entry of a dataset's `source` (defaults: the config schema's)."""

    url: str
    split: str | None = default_field("$defs", "source", "split")
    sha256: str | None = default_field("$defs", "source", "sha256")
    max_scenes: int | None = default_field("$defs", "source", "max_scenes")
    endpoint_url: str | None = default_field("$defs", "source", "endpoint_url")
    anonymous: bool = default_field("$defs", "source", "anonymous")

    @property
    def scheme(self) -> str:
        scheme = urlparse(self.url).scheme
        return scheme if scheme in ("http", "https", "s3") else "file"


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
    access = s3_storage.Access.ANONYMOUS if entry.anonymous else s3_storage.Access.ENVIRONMENT
    client = s3_storage.client(entry.endpoint_url, access, retries=settings.retries,
                               timeout_s=settings.timeout_s)
    # botocore retries requests; s3transfer retries a body cut mid-stream: one loop each.
    transfer = TransferConfig(num_download_attempts=settings.retries + 1, use_threads=False)
    objects: dict[str, str] = {}

    def list_keys() -> None:
        objects.update((o["Key"], o.get("ETag", ""))
                       for o in s3_storage.list_objects(client, bucket, prefix)
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
        code = s3_storage.error_code(exc)
        if code in ("AccessDenied", "NoSuchBucket", "403", "404", "NoSuchKey"):
            raise NadirError(f"{what}: {code} (for a public bucket, keep anonymous: true; "
                             "for a private one, set anonymous: false and AWS_* "
                             "credentials in the environment)") from None
        raise NadirError(f"{what}: {code or exc}; gave up after botocore's retries") from None
    except (BotoCoreError, RetriesExceededError, S3TransferFailedError) as exc:
        raise NadirError(f"{what}: {exc}; gave up after botocore's retries (check the "
                         "endpoint_url and that the server is up)") from None


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


def generate_sample(spec: dict, dest: Path) -> list[tuple[SourceEntry, Path]]:
    """The sample's scenes, generated into `dest` in DOTA's layout, one folder per split
    (`00-train/`, `01-val/`): its entries as a fetched DOTA source's."""
    settings = sample.SampleSpec(**{k: spec[k] for k in sample.SPEC_KEYS})
    entries = []
    for n, split in enumerate(("train", "val")):
        folder = dest / f"{n:02d}-{split}"
        shutil.rmtree(folder, ignore_errors=True)
        sample.write_split(settings, split, folder)
        entries.append((SourceEntry(f"generated sample (seed {settings.seed})", split), folder))
    return entries
