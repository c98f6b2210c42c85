"""Fetch one pretrained weights file, verify its checksum, and record what was fetched.

The fetch_weights rule runs this once per file; every training job that starts from those weights
then takes the file from storage, so a sweep downloads each file once, and jobs on a cluster
without internet access need none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from nadir.errors import NadirError
from nadir.hashing import sha256_of

log = logging.getLogger(__name__)


class ChecksumError(NadirError):
    pass


def fetch_weights(url: str, sha256: str | None, out: Path, timeout: float = 60.0) -> dict:
    """Download `url` to `out` if its SHA-256 starts with `sha256`; write `<out>.json` beside it.

    `sha256` may be a full digest or the prefix torchvision publishes in its file names; None
    means upstream publishes none, and the digest is recorded but cannot be checked.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as fh:
            total = int(response.headers.get("Content-Length") or 0)
            reported = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                fh.write(block)
                digest.update(block)
                size += len(block)
                if total and size - reported >= total // 10:
                    reported = size
                    log.info("downloaded %.1f/%.1f MB", size / 1e6, total / 1e6)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise NadirError(
            f"cannot download pretrained weights from {url}: {reason}. Without network access, "
            f"download the file elsewhere and place it at {out}, or set `pretrained: none` to "
            "train from scratch") from None
    found = digest.hexdigest()
    if sha256 is not None and not found.startswith(sha256.lower()):
        partial.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: SHA-256 {found} does not start with the catalogue's "
                            f"{sha256}; the download is corrupt or the file changed upstream")
    os.replace(partial, out)
    record = {"url": url, "sha256": found, "bytes": size, "verified": sha256 is not None,
              "expected_sha256": sha256}
    Path(str(out) + ".json").write_text(json.dumps(record, indent=1) + "\n")
    if sha256 is None:
        log.warning("%s: upstream publishes no checksum; recorded SHA-256 %s unverified",
                    url, found)
    log.info("fetched %s (%.1f MB, sha256 %s)", out, size / 1e6, found[:16])
    return record


def verify_file(path: Path, sha256: str | None) -> str:
    """Check a weights file a user placed by hand, or one taken from storage, against the
    catalogue's digest (None: nothing to check); returns its SHA-256."""
    found = sha256_of(path)
    if sha256 is not None and not found.startswith(sha256.lower()):
        raise ChecksumError(f"{path}: SHA-256 {found} does not start with the "
                            f"catalogue's {sha256}; delete it so the fetch_weights rule refetches")
    return found
