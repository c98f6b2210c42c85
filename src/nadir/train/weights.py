"""Pretrained weights: fetch a file once and record its digest; read it, and every later file of
tensors (model.pt, checkpoints), without unpickling anything but tensors and plain data.

The fetch_weights rule runs `fetch_catalogue_weights` once per file; every training job that
starts from those weights then takes the file from storage, so a sweep downloads each file
once, and jobs on a cluster without internet access need none. The download is
`nadir.storage.download.download`'s: resumed only on the same version, retried, complete (every
announced byte) before it is renamed into place, and made by one process at a time (two jobs
asking for one file get it once). A training job checks the file against the digest recorded
beside it (`verify_recorded`), so a file replaced in shared storage after it was fetched is
refused.

Weights files are pickles, and unpickling runs whatever a pickle names. `read_weights` reads them
with torch's restricted unpickler (`weights_only=True`: tensors and plain data), and
`read_pickled_arrays` reads detectron2's `.pkl` files with one that admits numpy arrays,
numbers, strings, lists and dicts only. A file holding anything else is refused, naming it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import BinaryIO

from nadir.core.errors import InputError, NadirError
from nadir.core.hashing import sha256_of
from nadir.storage.download import ChecksumError, FetchSettings, download
from nadir.storage.urls import redact

log = logging.getLogger(__name__)

# What a detectron2 `.pkl` may name: how numpy pickles arrays, dtypes and scalars (under numpy 1
# and 2 module names; `_frombuffer` for protocol 5), how protocol 2 pickles bytes
# (`_codecs.encode`), and ordered dicts. Nothing else is ever imported by the unpickler.
ARRAY_PICKLE_GLOBALS = {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                         ("numeric", "_frombuffer"))} | {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode")}


def fetch_weights(url: str, sha256: str | None, out: Path,
                  settings: FetchSettings | None = None) -> dict:
    """Download `url` to `out` if its SHA-256 starts with `sha256`; write `<out>.json` beside it.

    `sha256` may be a full digest or the prefix torchvision publishes in its file names; None
    means upstream publishes none, and the digest is recorded but cannot be checked (the length
    the server announced still is).
    """
    out = Path(out)
    try:
        found = download(url, out, sha256, settings or FetchSettings())
    except InputError:  # a checksum mismatch says so itself
        raise
    except NadirError as error:
        raise NadirError(
            f"cannot download pretrained weights: {error}. Without network access, download "
            f"the file elsewhere, place it at {out} and run `nadir fetch-weights --file "
            f"{out.name} --out {out}` (it checks the file and records its digest), or set "
            "`pretrained: none` to train from scratch") from None
    size = out.stat().st_size
    record = {"url": redact(url), "sha256": found, "bytes": size,
              "verified": sha256 is not None, "expected_sha256": sha256}
    # Written whole or not at all: a second job fetching the same file writes the same record.
    sidecar = Path(str(out) + ".json")
    partial = sidecar.with_name(f"{sidecar.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, sidecar)
    if sha256 is None:
        log.warning("%s: upstream publishes no checksum; recorded SHA-256 %s unverified",
                    redact(url), found)
    log.info("fetched %s (%.1f MB, sha256 %s)", out, size / 1e6, found[:16])
    return record


def fetch_catalogue_weights(file: str, out: str | Path, url: str | None = None) -> dict:
    """The fetch_weights job, and `nadir fetch-weights`: the catalogue's weights file `file`
    downloaded (from `url` instead of the catalogue's, a mirror) and verified into `out`, or,
    when a file is already there (placed by hand), verified and recorded."""
    from nadir.config.catalogue import weight_files

    files = weight_files()
    if file not in files:
        raise NadirError(f"{file!r} is not a weights file of the catalogue; known files: "
                         f"{sorted(files)}")
    source = files[file]
    return fetch_weights(url or source.url, source.sha256, Path(out))


def verify_recorded(path: Path, sha256: str | None) -> str:
    """Check a weights file before it is used: its SHA-256 must be the one fetch_weights
    recorded beside it (`<file>.json`) and start with the catalogue's `sha256` (when upstream
    publishes one); returns the digest. A file replaced after it was fetched is refused."""
    path = Path(path)
    record_path = Path(f"{path}.json")
    try:
        recorded = json.loads(record_path.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(record_path, f"no readable download record of {path.name} ({exc!r}); "
                                      f"run `nadir fetch-weights --file {path.name} --out "
                                      f"{path}`, which checks the file and writes it") from None
    actual = sha256_of(path)
    if actual != recorded:
        raise ChecksumError(path, f"SHA-256 {actual} is not the {recorded} recorded when it "
                                  f"was fetched ({record_path.name}): the file changed since; "
                                  "delete both so the fetch_weights rule fetches it again")
    if sha256 and not actual.startswith(sha256.lower()):
        raise ChecksumError(path, f"SHA-256 mismatch for the catalogue's weights file: "
                                  f"expected {sha256}, got {actual}; delete it and its record "
                                  "so the fetch_weights rule fetches it again")
    return actual


def read_weights(source: Path | BinaryIO, where: str | Path | None = None,
                 mmap: bool = False):
    """What a weights file, model.pt or checkpoint holds, read by torch's restricted unpickler
    (`weights_only=True`: tensors, numbers, strings, lists, dicts); anything else in it is
    refused with an InputError naming `where` (default: the file), and nothing is run."""
    import torch

    where = where if where is not None else source
    try:
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise InputError(where, f"refused: it holds pickled objects other than tensors and "
                                f"plain data, which nadir never unpickles ({reason})") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise InputError(where, f"not a readable weights file ({exc}); fetch or copy it "
                                "again") from None


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays, numbers, strings, lists and dicts, and
    refuses every other global a pickle names (so no pickle runs code through it)."""

    def find_class(self, module: str, name: str):
        if (module, name) in ARRAY_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not an array, a number, a string, a "
                                     "list or a dict")


def _plain(value, depth: int = 0) -> bool:
    """Whether `value` is only arrays (not of Python objects), numbers, strings, lists, dicts."""
    import numpy as np

    if depth > 20:
        return False
    if isinstance(value, np.ndarray):
        return value.dtype != object
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v, depth + 1) for v in value)
    return value is None or isinstance(value, bool | int | float | str | bytes | np.generic)


def read_pickled_arrays(path: Path):
    """A pickle of numpy arrays (detectron2's and Caffe2's `.pkl` weights), read with
    ArrayUnpickler; a file that names anything else, or holds object arrays, is refused with an
    InputError naming it."""
    try:
        with open(path, "rb") as fh:
            data = ArrayUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, MemoryError) as exc:
        raise InputError(path, f"refused: not a pickle of arrays, numbers, strings, lists and "
                               f"dicts only ({exc}); nadir never unpickles anything else") \
            from None
    if not _plain(data):
        raise InputError(path, "refused: it holds objects other than arrays, numbers, "
                               "strings, lists and dicts")
    return data
