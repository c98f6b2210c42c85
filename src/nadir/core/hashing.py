"""SHA-256 of files: how fetched data, weights and training inputs are identified.

Its own module so that training can digest its inputs without importing the fetch stage.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20  # read files in 1 MiB blocks: memory stays flat for files of any size


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
