"""Errors that tell the user which input is wrong and what was expected."""

from __future__ import annotations

from pathlib import Path

from nadir.core.redaction import redact_urls_in


class NadirError(Exception):
    """An error caused by the user's input or configuration, reported without a traceback.

    Its message never holds a URL's secret parts (user info, query, fragment): every URL in it
    is redacted (nadir.core.redaction), whoever wrote the message."""

    def __init__(self, *args):
        super().__init__(*(redact_urls_in(a) if isinstance(a, str) else a for a in args))


class InputError(NadirError):
    """A problem in an input file, located by path and (where it applies) line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
