"""The config schema: where it is, the defaults it holds, and which jobs each key reaches.

The schema (workflow/schemas/config.schema.yaml) is the one place a default is written down:
settings records (ChipParams, FetchSettings, ...) take theirs from it with `default_field`, and
the workflow asks it which keys a job reads (`job_keys`, from each key's `x-jobs`) instead of
keeping lists of its own. This module imports nothing of nadir's, so any layer may use it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema() -> dict:
    """A copy of the schema, to change (the config's validation fills in its own parts)."""
    return copy.deepcopy(_schema())


def _node(*keys: str) -> dict:
    """A key's schema by its path; a path starting with "$defs" names a definition first
    ("$defs", "source", "anonymous": a dataset source's `anonymous`)."""
    node = _schema()
    if keys and keys[0] == "$defs":
        node, keys = node["$defs"][keys[1]], keys[2:]
    for key in keys:
        node = node["properties"][key]
    return node


def schema_default(*keys: str):
    """The default of a key given by its path, e.g. schema_default("rasters", "max_values")."""
    return copy.deepcopy(_node(*keys)["default"])


def section_defaults(*keys: str) -> dict:
    """The defaults of every key of a section given by its path (as for `schema_default`), e.g.
    section_defaults("fetch"), section_defaults("$defs", "dataset", "on_bad_input")."""
    properties = _node(*keys)["properties"]
    return {name: copy.deepcopy(key["default"]) for name, key in properties.items()
            if "default" in key}


def default_field(*keys: str, kind: Callable = lambda value: value):
    """A dataclass field whose default is the schema's for the key at `keys` (as for
    `schema_default`), converted by `kind` (e.g. tuple for a list): a settings record never
    writes a default of its own."""
    return dataclasses.field(default_factory=lambda: kind(schema_default(*keys)))


def job_keys(job: str, *section: str) -> list[str]:
    """The keys of a section (a top-level one, or `$defs` `dataset`) whose `x-jobs` name `job`:
    what the rule of that job hands it, so that changing one of them reruns it."""
    node = _node("$defs", "dataset") if section == ("dataset",) else _node(*section)
    return [name for name, key in node["properties"].items() if job in key.get("x-jobs", ())]


def applies_to_format(key: str, dataset_format: str) -> bool:
    """Whether a key of a dataset's entry applies to its format (its `x-formats`, if any)."""
    formats = _node("$defs", "dataset", key).get("x-formats")
    return formats is None or dataset_format in formats


def renamed_keys() -> dict[str, dict]:
    """Keys of earlier versions (dotted, `*` for any dataset) and what replaced them: `key`,
    the new key, and `why` (the schema's `x-renamed`)."""
    return copy.deepcopy(_schema().get("x-renamed", {}))
