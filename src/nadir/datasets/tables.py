"""The normalised tables the index stage writes and every later stage reads.

Every dataset format is parsed into the same two CSV files, so chipping and everything after it
never sees a dataset's own format:
- `scenes.csv`: scene, split, width, height, bands, dtype, gsd, objects
- `annotations.csv`: scene, object, category, difficult, polygon (x y pairs in pixels)
and `categories.json` (COCO-style ids starting at 1, in the dataset's class order).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

SCENE_FIELDS = ["scene", "split", "width", "height", "bands", "dtype", "gsd", "objects"]
ANNOTATION_FIELDS = ["scene", "object", "category", "difficult", "polygon"]
# The split of scenes the index set aside (an image without labels): kept in scenes.csv so that
# the table accounts for every fetched image, never chipped.
EXCLUDED = "excluded"


@dataclass(frozen=True)
class IndexTables:
    """The files an index writes (the index rule declares each of them)."""

    scenes: Path  # scenes.csv
    annotations: Path  # annotations.csv
    categories: Path  # categories.json
    summary: Path  # summary.json: counts, splits and every counted skip

    def make_folders(self) -> None:
        for path in (self.scenes, self.annotations, self.categories, self.summary):
            path.parent.mkdir(parents=True, exist_ok=True)


@dataclass
class Annotation:
    scene: str
    object: int
    category: str
    difficult: int
    polygon: list[float]


def write_scene_table(path: Path, scenes: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, SCENE_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(scenes)


def format_polygon(polygon: list[float]) -> str:
    """x y pairs in `%g` notation (6 significant digits), one template for the whole polygon:
    about twice as fast as formatting each value on its own."""
    return " ".join(["%g"] * len(polygon)) % tuple(polygon)


def categories(classes: list[str], ids: list[int] | None = None) -> list[dict]:
    """COCO-style categories in the given class order: the given ids (a dataset's own, e.g.
    RarePlanes' role_id), else ids from 1."""
    ids = ids or list(range(1, len(classes) + 1))
    return [{"id": i, "name": name} for i, name in zip(ids, classes, strict=True)]


def write_categories(path: Path, classes: list[str], ids: list[int] | None = None) -> None:
    path.write_text(json.dumps(categories(classes, ids), indent=1) + "\n")


def read_scenes(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("width", "height", "bands", "objects"):
            row[key] = int(row[key])
    return rows


def read_annotations(path: Path) -> dict[str, list[Annotation]]:
    """Annotations grouped by scene."""
    by_scene: dict[str, list[Annotation]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            ann = Annotation(row["scene"], int(row["object"]), row["category"],
                             int(row["difficult"]), [float(v) for v in row["polygon"].split()])
            by_scene.setdefault(ann.scene, []).append(ann)
    return by_scene
