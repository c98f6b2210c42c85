"""What every dataset parser shares: the bad-input policy, its skip counts, and class filtering.

Each case of bad input is either an error (the run stops, naming file and line) or a counted
skip that is written to the dataset's index summary: nothing is dropped without a count.
"""

from __future__ import annotations

import codecs
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nadir.core.errors import InputError
from nadir.core.schema import section_defaults

log = logging.getLogger(__name__)

# Each case of bad input and what the config does with it unless told otherwise (the schema's
# `on_bad_input` defaults).
DEFAULT_POLICY = section_defaults("$defs", "dataset", "on_bad_input")
CASES = tuple(DEFAULT_POLICY)
EXAMPLES_KEPT = 5  # per case, in the summary, so a user can find what was skipped
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_label_text(path: str | Path) -> str:
    """A label file's text: UTF-8 with or without a byte-order mark (Windows editors write
    one), or UTF-16 with its mark; any other encoding is an error naming the line, never text
    with a mangled first line or replaced characters."""
    data = Path(path).read_bytes()
    encoding = "utf-16" if data.startswith(UTF16_BOMS) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(path, f"not {encoding.upper().removesuffix('-SIG')} text (byte "
                               f"{exc.start}: {data[exc.start:exc.start + 1]!r}); save the "
                               "file as UTF-8", line) from None


@dataclass
class BadInput:
    """Applies the per-case policy: raise `InputError`, or count the skip and keep examples."""

    policy: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_POLICY))
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    from_config: bool = True  # errors then say which config key turns them into skips

    def __post_init__(self):
        unknown = set(self.policy) - set(CASES)
        if unknown:
            raise ValueError(f"unknown bad-input case(s) {sorted(unknown)}; known: {CASES}")
        self.policy = {**DEFAULT_POLICY, **self.policy}

    def report(self, case: str, path: str, message: str, line: int | None = None) -> None:
        """Handle one bad record: raise if the policy says error, else count it."""
        if self.policy[case] == "error":
            hint = (f" (set on_bad_input.{case}: skip to count and skip these instead)"
                    if self.from_config else "")
            raise InputError(path, message + hint, line)
        self.skipped[case] += 1
        where = f"{path}, line {line}" if line is not None else path
        examples = self.examples.setdefault(case, [])
        if len(examples) < EXAMPLES_KEPT:
            examples.append(f"{where}: {message}")
        if self.skipped[case] == 1:
            log.warning("skipping %s (%s: %s); later ones are only counted", case, where, message)

    def summary(self) -> dict:
        return {"skipped": {case: self.skipped.get(case, 0) for case in CASES},
                "examples": self.examples}


@dataclass
class ClassFilter:
    """Merges classes, keeps a subset and drops tiny objects, counting every drop."""

    classes: list[str]
    merge: dict[str, str] = field(default_factory=dict)
    keep: list[str] | None = None
    min_size: float = 0.0
    dropped: Counter = field(default_factory=Counter)

    def __post_init__(self):
        unknown = sorted(set(self.merge) - set(self.classes))
        if unknown:
            raise InputError("config", f"classes.merge names unknown class(es) {unknown}; "
                                       f"the dataset's classes are {self.classes}")
        merged = self.output_classes(ignore_keep=True)
        missing = sorted(set(self.keep or []) - set(merged))
        if missing:
            raise InputError("config", f"classes.keep names class(es) {missing} that do not "
                                       f"exist after merging; available: {merged}")

    def output_classes(self, ignore_keep: bool = False) -> list[str]:
        """The classes after merging (in first-appearance order) and keeping."""
        names = list(dict.fromkeys(self.merge.get(c, c) for c in self.classes))
        if self.keep is None or ignore_keep:
            return names
        return [n for n in names if n in self.keep]

    def output_ids(self, source_ids: dict[str, int] | None) -> list[int] | None:
        """The ids of `output_classes` where the dataset numbers its classes itself: a merged
        name takes the id of its first member (None: ids from 1)."""
        if not source_ids:
            return None
        first: dict[str, int] = {}
        for name in self.classes:
            first.setdefault(self.merge.get(name, name), source_ids[name])
        return [first[name] for name in self.output_classes()]

    def apply(self, category: str, polygon: list[float]) -> str | None:
        """The output class of an object, or None (counted) when it is filtered out."""
        name = self.merge.get(category, category)
        if self.keep is not None and name not in self.keep:
            self.dropped["class_not_kept"] += 1
            return None
        if self.min_size <= 0:
            return name
        xs, ys = polygon[0::2], polygon[1::2]
        if min(max(xs) - min(xs), max(ys) - min(ys)) < self.min_size:
            self.dropped["smaller_than_min_size"] += 1
            return None
        return name

    def summary(self) -> dict:
        return {"class_not_kept": self.dropped.get("class_not_kept", 0),
                "smaller_than_min_size": self.dropped.get("smaller_than_min_size", 0)}
