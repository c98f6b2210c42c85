"""Fetch one pretrained weights file, verify its checksum, and record what was fetched.

The fetch_weights rule runs this once per file; every training job that starts from those weights
then takes the file from storage, so a sweep downloads each file once, and jobs on a cluster
without internet access need none. The download is `nadir.fetch.download`'s: resumed only on the
same version, retried, complete (every announced byte) before it is renamed into place, and
made by one process at a time (two jobs asking for one file get it once).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from nadir.errors import InputError, NadirError
from nadir.fetch import FetchSettings, download, verify
from nadir.urls import redact

log = logging.getLogger(__name__)



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
            f"the file elsewhere and place it at {out}, or set `pretrained: none` to train "
            "from scratch") from None
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


def verify_file(path: Path, sha256: str | None) -> str:
    """Check a weights file a user placed by hand, or one taken from storage, against the
    catalogue's digest (None: nothing to check); returns its SHA-256."""
    return verify(path, sha256, "the catalogue's weights file",
                  hint="delete it so the fetch_weights rule refetches")
