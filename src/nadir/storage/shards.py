"""The one reader of chip shards: members of the tar files by byte offset, never unpacked.

Training, prediction, the figures and the detectron2 adapter all find their chips through
`chip_ranges` and read them with a `ShardReader`, so a missing chip is reported the same way
everywhere. A shard is a local file or an s3:// object: the chip stage records each chip's
(offset, size) in its chip list, the COCO files carry them, and a reader of an S3 shard fetches
exactly those byte ranges (adjacent ones coalesced into one request), ahead of the loader
(`ShardReader.read_ahead`), optionally through a node-local cache of bounded size
(`ChipCache`). Chip lists (`shard-NNN.json`) are read back through `read_chip_list`, which
holds their names to the name rule (`nadir.core.names`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from nadir.core.errors import InputError, NadirError
from nadir.core.names import check_name

Member = tuple[int, str]  # (shard index, member name), as COCO images list their chips
Range = tuple[int, int]  # (data offset, size) of a member in its shard
# What chipping writes, and so all a chip is decoded as: Pillow, left to guess, opens dozens of
# formats, EPS among them through an external program (Ghostscript).
CHIP_FORMATS = ("JPEG", "PNG")
BLOCK = tarfile.BLOCKSIZE
# Two members' data are at most one header and one block's padding apart: ranges closer than
# this are fetched in one request (the bytes between cost under 1 KiB a chip).
COALESCE_GAP = 2 * BLOCK
MAX_REQUEST = 16 * 2**20  # one ranged GET at most (a coalesced run is split beyond it)
SIGNED_URL_LIFE = 3600  # seconds a shard's pre-signed URL is valid (renewed at half of it)
# Environment of the jobs that read shards (set by the workflow from `streaming.*`, like the
# storage's endpoint: changing them reruns nothing).
CACHE_DIR_VARIABLE = "NADIR_SHARD_CACHE_DIR"
CACHE_BYTES_VARIABLE = "NADIR_SHARD_CACHE_BYTES"

T = TypeVar("T")
log = logging.getLogger(__name__)


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> Range:
    """Append `data` to a tar being written as member `name`; its (data offset, size), which
    the chip list records so that readers need not scan the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
    # addfile leaves tar.offset at the end of the data, padded to whole blocks
    return tar.offset - -(-len(data) // BLOCK) * BLOCK, len(data)


def is_remote(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def member_offsets(shards: list[str | Path], wanted: set[Member],
                   listed_in: str | Path) -> dict[Member, Range]:
    """(data offset, size) of every wanted chip, found by scanning local tar files;
    `listed_in` is the file that lists them.

    A chip that its shard lacks, or a shard index beyond `shards`, is an InputError that names
    the shard (or the list) and the first such chip.
    """
    _check_indices(shards, {index for index, _ in wanted}, listed_in)
    offsets = {}
    for index in sorted({index for index, _ in wanted}):
        if is_remote(shards[index]):
            raise InputError(listed_in, f"its chips carry no member offsets, which reading "
                             f"{shards[index]} where it is needs; rerun the coco stage")
        with tarfile.open(shards[index]) as tar:
            for member in tar:
                if (index, member.name) in wanted:
                    offsets[(index, member.name)] = (member.offset_data, member.size)
    missing = sorted(wanted - offsets.keys())
    if missing:
        index, name = missing[0]
        raise InputError(shards[index], f"chip {name} is not in this shard ({len(missing)} "
                         f"chip(s) listed in {listed_in} are missing); rerun the chip stage")
    return offsets


def _check_indices(shards: list, indices: set[int], listed_in: str | Path) -> None:
    out_of_range = sorted(index for index in indices if not 0 <= index < len(shards))
    if out_of_range:
        raise InputError(listed_in, f"chips are listed in shard {out_of_range[0]}, but "
                         f"{len(shards)} shard(s) were given")


def chip_ranges(shards: list[str | Path], images: list[dict],
                listed_in: str | Path) -> dict[Member, Range]:
    """(offset, size) of each COCO image's chip: as the COCO file records them (`offset`,
    `size`, from the chip list), else found by scanning the shards (local files only)."""
    if images and all("offset" in im and "size" in im for im in images):
        _check_indices(shards, {im["shard"] for im in images}, listed_in)
        ranges = {(im["shard"], im["file_name"]): (int(im["offset"]), int(im["size"]))
                  for im in images}
        # A range S3 would be asked for as is: a negative one is no chip (and no valid Range).
        bad = next((member for member, (offset, size) in ranges.items()
                    if offset < 0 or size < 0), None)
        if bad is not None:
            raise InputError(listed_in, f"chip {bad[1]} of shard {bad[0]} is recorded at bytes "
                                        f"{ranges[bad][0]} (size {ranges[bad][1]}), not a range "
                                        "in a shard; rerun the coco stage")
        return ranges
    return member_offsets(shards, {(im["shard"], im["file_name"]) for im in images}, listed_in)


class ChipCache:
    """A node-local folder of chips fetched from S3, at most `limit` bytes: the least recently
    used chips make room for new ones. A chip is filed under its shard's URL and ETag (a
    rewritten shard is never served stale) and written whole before it is seen (rename)."""

    def __init__(self, folder: str | Path, limit: int):
        self.folder, self.limit = Path(folder), limit
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        found = [(p.stat().st_mtime_ns, p, p.stat().st_size)
                 for p in self.folder.glob("*/*") if not p.name.endswith(".part")]
        self._entries: OrderedDict[Path, int] = OrderedDict(
            (path, size) for _, path, size in sorted(found))
        self.size = sum(self._entries.values())
        self._evict(0)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def _path(self, shard_tag: str, offset: int, size: int) -> Path:
        return self.folder / shard_tag / f"{offset}-{size}"

    def get(self, shard_tag: str, offset: int, size: int) -> bytes | None:
        path = self._path(shard_tag, offset, size)
        with self._lock:
            if path not in self._entries:
                return None
            self._entries.move_to_end(path)
        try:
            data = path.read_bytes()
        except OSError:  # removed by another process sharing the folder
            return None
        return data if len(data) == size else None

    def put(self, shard_tag: str, offset: int, data: bytes) -> None:
        if len(data) > self.limit:
            return
        path = self._path(shard_tag, offset, len(data))
        with self._lock:
            if path in self._entries:
                return
            self._evict(len(data))
            path.parent.mkdir(exist_ok=True)
            part = path.with_name(f"{path.name}.{threading.get_ident()}.part")
            part.write_bytes(data)
            os.replace(part, path)
            self._entries[path] = len(data)
            self.size += len(data)

    def _evict(self, room: int) -> None:
        while self._entries and self.size + room > self.limit:
            path, size = self._entries.popitem(last=False)
            path.unlink(missing_ok=True)
            self.size -= size


def cache_from_environment() -> ChipCache | None:
    """The node-local chip cache the workflow configured (`streaming.cache_dir`,
    `streaming.cache_bytes`), or None."""
    folder, limit = os.environ.get(CACHE_DIR_VARIABLE), os.environ.get(CACHE_BYTES_VARIABLE)
    return ChipCache(folder, int(limit)) if folder and limit and int(limit) > 0 else None


class ShardReader:
    """Chips of a list of shards, local files or s3:// objects, read by (offset, size).

    S3 is read with the storage's endpoint and keys (`nadir.storage.s3`), one ranged GET per
    run of adjacent wanted chips (gaps under `COALESCE_GAP`, at most `MAX_REQUEST` bytes);
    `bytes_fetched` counts what S3 sent. `read_ahead` keeps the next batches in flight on
    background threads. The reader can be sent to loader processes: each opens its own client.
    """

    def __init__(self, shards: list[str | Path], cache: ChipCache | None = None,
                 endpoint: str | None = None, threads: int = 8):
        from nadir.storage import s3

        self.shards = [str(s) for s in shards]
        self.cache, self.threads = cache, threads
        self.endpoint = endpoint if endpoint is not None else s3.storage_endpoint()
        self.bytes_fetched = self.requests = 0
        self._objects: dict[int, tuple[int, str]] = {}  # S3 shard: (size, cache tag)
        self._lock = threading.Lock()
        self._client = None
        self._urls: dict[int, tuple[str, float]] = {}  # S3 shard: (signed URL, renew at)
        remote = sum(map(is_remote, self.shards))
        if remote:
            import boto3  # noqa: F401 - imported once here, not again in each loader process
            log.info("reading chips where they are: %d shard(s) on S3 by ranged reads, %s",
                     remote, f"cache {cache.folder} (at most {cache.limit / 2**30:.1f} GiB)"
                     if cache else "no cache")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_lock": None, "_urls": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def remote(self) -> bool:
        return any(map(is_remote, self.shards))

    def _s3(self):
        with self._lock:
            if self._client is None:
                self._client = _process_client(self.endpoint)
            return self._client

    def _object(self, index: int) -> tuple[int, str]:
        """(size, cache tag) of an S3 shard, asked once (HEAD)."""
        if index not in self._objects:
            from botocore.exceptions import BotoCoreError, ClientError

            from nadir.storage.s3 import error_code, split_url

            bucket, key = split_url(self.shards[index])
            try:
                head = self._s3().head_object(Bucket=bucket, Key=key)
            except ClientError as error:
                raise InputError(self.shards[index], f"cannot read this shard "
                                 f"({error_code(error) or error}); rerun the chip stage, or "
                                 "check the storage's endpoint and keys") from None
            except BotoCoreError as error:
                raise NadirError(f"{self.shards[index]}: cannot reach the storage "
                                 f"({type(error).__name__}); check its endpoint") from None
            tag = hashlib.sha256(f"{self.shards[index]}\0{head.get('ETag')}".encode())
            self._objects[index] = (head["ContentLength"], tag.hexdigest()[:24])
        return self._objects[index]

    def read(self, members: list[tuple[int, str, int, int]]) -> list[bytes]:
        """The bytes of each (shard index, member name, offset, size), in the order given.

        The ranged GETs of one call run at once on the process's fetch threads, so a batch
        whose chips lie in many shards takes about as long as one in a single shard. S3 is
        asked for each shard's size and ETag (a HEAD) only with a cache, which keys chips by
        them; without one, the GET's Content-Range says the shard's size. A range beyond its
        shard's end (a shard shorter than its chip list says) is an InputError naming the
        shard and the member."""
        out: dict[int, bytes] = {}
        wanted: dict[int, list[tuple[int, int, int, str]]] = {}
        if self.cache:  # the HEADs of the shards not asked yet, at once
            unknown = {index for index, *_ in members
                       if is_remote(self.shards[index]) and index not in self._objects}
            list(_process_pool(self.threads).map(self._object, sorted(unknown)))
        for position, (index, name, offset, size) in enumerate(members):
            if not is_remote(self.shards[index]):
                out[position] = self._read_local(index, name, offset, size)
                continue
            if self.cache:
                total, tag = self._object(index)
                self._check_within(index, name, offset, size, total)
                cached = self.cache.get(tag, offset, size)
                if cached is not None:
                    out[position] = cached
                    continue
            wanted.setdefault(index, []).append((offset, size, position, name))
        runs = [(index, run) for index, ranges in wanted.items()
                for run in _coalesce(sorted(ranges))]
        if len(runs) == 1:
            out.update(self._fetch(*runs[0]))
        else:
            for found in _process_pool(self.threads).map(lambda r: self._fetch(*r), runs):
                out.update(found)
        return [out[position] for position in range(len(members))]

    def _check_within(self, index: int, name: str, offset: int, size: int, total: int) -> None:
        if offset < 0 or offset + size > total:
            raise InputError(self.shards[index], f"chip {name} lies at bytes {offset}.."
                             f"{offset + size}, beyond this shard's {total} bytes; rerun "
                             "the chip stage (the shard is not the one its chip list "
                             "describes)")

    def _read_local(self, index: int, name: str, offset: int, size: int) -> bytes:
        try:
            with open(self.shards[index], "rb") as fh:
                fh.seek(offset)
                data = fh.read(size)
        except OSError as error:
            raise InputError(self.shards[index], f"cannot read chip {name} "
                             f"({error.strerror}); rerun the chip stage") from None
        if len(data) != size:
            raise InputError(self.shards[index], f"chip {name} is cut short ({len(data)} of "
                             f"{size} bytes at offset {offset}); rerun the chip stage")
        return data

    def _signed_url(self, index: int) -> str:
        """A pre-signed GET URL of an S3 shard, signed by the storage's client and renewed at
        half its life. Ranged GETs through it cost a third of boto3's CPU per request (bench/
        README.md); the URL is a secret: it is kept in memory and appears in no message."""
        from nadir.storage.s3 import split_url

        with self._lock:
            url, renew = self._urls.get(index, ("", 0.0))
        if time.monotonic() >= renew:
            bucket, key = split_url(self.shards[index])
            url = self._s3().generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=SIGNED_URL_LIFE)
            with self._lock:
                self._urls[index] = (url, time.monotonic() + SIGNED_URL_LIFE / 2)
        return url

    def _fetch(self, index: int, run: list[tuple[int, int, int, str]]) -> dict[int, bytes]:
        """One ranged GET covering a run of members; their bytes by position."""
        import urllib3

        start, end = run[0][0], max(offset + size for offset, size, _, _ in run)
        failure = None
        try:
            response = _process_http(self.threads).request(
                "GET", self._signed_url(index), headers={"Range": f"bytes={start}-{end - 1}"},
                retries=urllib3.Retry(total=4, backoff_factor=0.5,
                                      status_forcelist=(500, 502, 503, 504)),
                timeout=urllib3.Timeout(connect=30, read=120))
            body = response.data
        except urllib3.exceptions.HTTPError as error:  # its text holds the signed URL
            failure = type(error).__name__
        else:
            # "bytes START-END/TOTAL", or "bytes */TOTAL" with 416: the range lies beyond it.
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            if response.status == 416 and total.isdigit():
                self._check_within(index, run[0][3], start, end - start, int(total))
            if response.status in (403, 404):
                raise InputError(self.shards[index], f"cannot read this shard "
                                 f"({response.status}); rerun the chip stage, or check the "
                                 "storage's endpoint and keys")
            if response.status != 206:
                failure = f"HTTP {response.status}"
        if failure:
            raise NadirError(f"{self.shards[index]}: reading chips {run[0][3]}..{run[-1][3]} "
                             f"(bytes {start}..{end}) failed ({failure})")
        with self._lock:
            self.bytes_fetched += len(body)
            self.requests += 1
        tag = self._object(index)[1] if self.cache else None
        found = {}
        for offset, size, position, name in run:
            data = body[offset - start:offset - start + size]
            if len(data) != size:
                raise InputError(self.shards[index], f"chip {name} is cut short ({len(data)} "
                                 f"of {size} bytes at offset {offset}); rerun the chip stage")
            if tag:
                self.cache.put(tag, offset, data)
            found[position] = data
        return found

    def read_ahead(self, batches: Iterable[T],
                   members_of: Callable[[T], list[tuple[int, str, int, int]]],
                   depth: int) -> Iterator[tuple[T, list[bytes]]]:
        """(batch, its chips' bytes) for each batch, up to `depth` next batches read on
        background threads meanwhile: the loader waits only when S3 falls behind. The depth
        starts at one and grows by two a batch, so the first batch has the connection to
        itself (time to the first step) and later ones overlap."""
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shard-read-ahead")
        pending: deque = deque()
        source = iter(batches)
        limit = 1

        def fill() -> None:
            while len(pending) < limit:
                batch = next(source, pending)  # `pending` marks the end
                if batch is pending:
                    return
                pending.append((batch, pool.submit(self.read, members_of(batch))))

        try:
            fill()
            while pending:
                batch, future = pending.popleft()
                chips = future.result()
                limit = min(depth, limit + 2)
                fill()
                yield batch, chips
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)


_CLIENTS: dict[tuple, object] = {}
_HTTP: dict[int, object] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}
_CLIENTS_LOCK = threading.Lock()


def _process_client(endpoint: str | None):
    """One S3 client per process, endpoint and storage keys, shared by its readers (boto3's
    clients are thread-safe; a loader process forked from this one makes its own: sockets are
    not shared across a fork)."""
    from nadir.storage import s3

    key = (os.getpid(), endpoint, s3.storage_keys())
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = s3.client(endpoint)
        return _CLIENTS[key]


def _process_http(connections: int):
    """One urllib3 pool per process for the ranged GETs (certificates: botocore's bundle)."""
    import urllib3
    from botocore.httpsession import get_cert_path

    with _CLIENTS_LOCK:
        if os.getpid() not in _HTTP:
            _HTTP[os.getpid()] = urllib3.PoolManager(maxsize=connections,
                                                     ca_certs=get_cert_path(True))
        return _HTTP[os.getpid()]


def _process_pool(threads: int) -> ThreadPoolExecutor:
    """One pool per process for the ranged GETs of one `ShardReader.read` (a pool's threads
    do not survive a fork: a loader process makes its own)."""
    with _CLIENTS_LOCK:
        if os.getpid() not in _POOLS:
            _POOLS[os.getpid()] = ThreadPoolExecutor(threads, thread_name_prefix="shard-fetch")
        return _POOLS[os.getpid()]


def _coalesce(ranges: list[tuple[int, int, int, str]]) -> Iterator[list]:
    """Runs of (offset, size, ...) sorted by offset whose gaps are under `COALESCE_GAP`, each
    spanning at most `MAX_REQUEST` bytes (a larger member is a run of its own)."""
    run: list = []
    for item in ranges:
        if run and (item[0] - (run[-1][0] + run[-1][1]) > COALESCE_GAP
                    or item[0] + item[1] - run[0][0] > MAX_REQUEST):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def read_chips(shards: list[str | Path], images: list[dict],
               listed_in: str | Path) -> list[bytes]:
    """The encoded chips of COCO `images`, in their order; `listed_in`: the COCO file."""
    ranges = chip_ranges(shards, images, listed_in)
    reader = ShardReader(shards, cache_from_environment())
    return reader.read([(im["shard"], im["file_name"],
                         *ranges[(im["shard"], im["file_name"])]) for im in images])


TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")


def decode_chip(source: bytes | Path, where: str | Path):
    """A chip's pixels as a (height, width, bands) array: JPEG and PNG chips as RGB uint8 (grey
    repeated), TIFF chips (any band count and type) as stored, one band repeated to three.
    Decoded only as these formats; anything else (a tampered shard) is an InputError naming
    `where`."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if data[:4] in TIFF_SIGNATURES:
        return _decode_tiff(data, where)
    try:
        with Image.open(io.BytesIO(data), formats=CHIP_FORMATS) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(where, f"not a JPEG, PNG or TIFF chip ({exc}); rerun the chip "
                                "stage") from None


def _decode_tiff(data: bytes, where: str | Path):
    """A TIFF chip's bands by GDAL's GTiff driver alone (no other driver is tried)."""
    import warnings

    import numpy as np
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings(), MemoryFile(data) as memfile, \
                memfile.open(driver="GTiff") as src:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            pixels = src.read()
    except RasterioError as exc:
        raise InputError(where, f"not a readable TIFF chip ({exc}); rerun the chip stage") \
            from None
    if len(pixels) == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def read_chip_list(path: Path) -> dict:
    """A shard's chip list read back (a later job, maybe from shared storage): every scene and
    chip file name must follow the name rule, since chip names become files and tar members."""
    try:
        shard = json.loads(Path(path).read_text())
        for chip in shard["chips"]:
            check_name(chip["scene"], path, "scene name")
            check_name(chip["file"], path, "chip file name")
            if chip.get("geotiff") is not None:
                check_name(chip["geotiff"], path, "chip GeoTIFF name")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a readable chip list ({exc!r}); rerun the chip job") \
            from None
    return shard
