"""Archives from untrusted sources, extracted within bounds and never outside their folder.

Archives (.zip, .tar, .tar.gz, .tgz, and archives inside them) are extracted into a folder
named after them, within caps on members, bytes and expansion ratio (`Expansion`). Every member
must land inside the folder (`nadir.core.containment`); tar's `data` filter also refuses links
that point out, devices and FIFOs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path

from nadir.core.containment import contained
from nadir.core.errors import InputError
from nadir.storage.download import BLOCK, FetchSettings

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


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


def archive_folder(archive: Path) -> Path:
    """The folder an archive is extracted into: beside it, named after it (`part1.zip` ->
    `part1/`), as archives inside archives are, so that its name stays in every path."""
    suffix = next(x for x in ARCHIVE_SUFFIXES if archive.name.lower().endswith(x))
    return archive.with_name(archive.name[:-len(suffix)])
