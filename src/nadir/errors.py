"""Errors that tell the user which input is wrong and what was expected."""

from __future__ import annotations

from pathlib import Path


class NadirError(Exception):
    """An error caused by the user's input or configuration, reported without a traceback."""


class InputError(NadirError):
    """A problem in an input file, located by path and (where it applies) line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
