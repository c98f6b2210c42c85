"""The one rule for names that come from data and become file names, tar members or command
arguments: scene names, file names inside archives and buckets, paths read back from manifests.

A name is letters, digits, '.', '_' and '-', starting with a letter or a digit. That rule admits
every file of the supported datasets (`P0000.png`, `2355.tif`, `labelTxt-v1.5`, RarePlanes'
tile names) and nothing a shell, a path or GDAL gives a meaning to: no space, quote, `$`, `;`,
backquote, `/`, `\\`, `:`, `!`, no leading `.` (so no `..` and no hidden file), no leading `-`
(so no name reads as an option). Untrusted names are checked where they enter (fetch, index,
manifests read back) and refused with an error naming the file; nothing rewrites them quietly,
since a rewritten name would no longer pair an image with its label.
"""

from __future__ import annotations

import re
from pathlib import Path

from nadir.core.errors import InputError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RULE = "letters, digits, '.', '_' and '-', starting with a letter or a digit"


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def check_name(name: object, where: str | Path, what: str = "name") -> str:
    """`name` itself when it follows the rule; otherwise an InputError naming `where` (the
    file or manifest it came from) and the name."""
    if not is_safe_name(name):
        raise InputError(where, f"{what} {name!r} is refused: names that become file names "
                                f"or command arguments must be {RULE}; rename it")
    return name


def check_relative_path(relative: object, where: str | Path, what: str = "path") -> str:
    """A '/'-separated relative path whose every part follows the name rule (so it can be
    neither absolute nor climb out with '..'); `relative` itself, or an InputError."""
    if not isinstance(relative, str) or not relative \
            or not all(is_safe_name(part) for part in relative.split("/")):
        raise InputError(where, f"{what} {relative!r} is refused: every part of a path read "
                                f"from data must be {RULE}; rename it")
    return relative


def safe_name(text: str, fallback: str) -> str:
    """`text` made into a name by the rule (other characters become '_', leading '.', '_'
    and '-' are dropped), or `fallback` when nothing is left: for names nadir makes itself
    from a URL or an item id, never for names that must pair with other files."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")
    return name or fallback
