"""Splits by scene, never by chip: the same scenes, fraction and seed always give the same split.

The index splits a dataset without an official split into train and val with it, and the COCO
stage holds train scenes out as the selection split with it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable


def seeded_split(scenes: Iterable[str], val_fraction: float, seed: int) -> dict[str, str]:
    """A random split by scene: the same scenes, fraction and seed always give the same split."""
    ordered = sorted(scenes)
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)  # noqa: S311 - a reproducible split, not a secret
    n_val = min(len(ordered) - 1, max(1, round(len(ordered) * val_fraction))) if len(
        ordered) > 1 else 0
    val = set(shuffled[:n_val])
    return {s: "val" if s in val else "train" for s in ordered}
