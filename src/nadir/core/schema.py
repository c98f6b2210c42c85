"""Where the config schema is, and its defaults for code that runs without a validated config.

The schema (workflow/schemas/config.schema.yaml) is the one place a default is written down;
this module imports nothing of nadir's, so any layer may read a default from it.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema_default(*keys: str):
    """The default of a key given by its path, e.g. schema_default("rasters", "max_values")."""
    node = _schema()
    for key in keys:
        node = node["properties"][key]
    return copy.deepcopy(node["default"])


def section_defaults(section: str) -> dict:
    """The defaults of every key of a top-level section, e.g. section_defaults("fetch")."""
    keys = _schema()["properties"][section]["properties"]
    return {name: copy.deepcopy(key["default"]) for name, key in keys.items() if "default" in key}
