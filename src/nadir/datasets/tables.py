"""The index stage: one scene table and one normalised annotation table per dataset.

Every dataset format is parsed into the same two CSV files, so chipping and everything after it
never sees a dataset's own format:
- `scenes.csv`: scene, split, width, height, bands, dtype, gsd, objects
- `annotations.csv`: scene, object, category, difficult, polygon (x y pairs in pixels)
and `categories.json` (COCO-style ids starting at 1, in the dataset's class order).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from nadir.core.errors import InputError
from nadir.core.names import check_name
from nadir.datasets.dota import parse_label_file
from nadir.datasets.records import polygon_outside
from nadir.raster.georeferencing import local_georeferencing

log = logging.getLogger(__name__)

SCENE_FIELDS = ["scene", "split", "width", "height", "bands", "dtype", "gsd", "objects"]
ANNOTATION_FIELDS = ["scene", "object", "category", "difficult", "polygon"]


@dataclass(frozen=True)
class SceneSource:
    scene: str
    split: str
    image: Path
    label: Path


@dataclass(frozen=True)
class IndexTables:
    """The files an index writes (the index rule declares each of them)."""

    scenes: Path  # scenes.csv
    annotations: Path  # annotations.csv
    categories: Path  # categories.json
    summary: Path  # summary.json: counts, splits and every counted skip

    @classmethod
    def in_folder(cls, folder: Path) -> IndexTables:
        """The four files under their usual names in one folder."""
        return cls(folder / "scenes.csv", folder / "annotations.csv",
                   folder / "categories.json", folder / "summary.json")

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


# How complete PNG and JPEG files end: GDAL reads a truncated one without an error (a PNG's
# missing rows come back as made-up pixels), so the index checks their last bytes.
TRAILERS = {".png": b"IEND\xaeB`\x82", ".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9"}


def _check_trailer(path: Path) -> None:
    trailer = TRAILERS.get(Path(path).suffix.lower())
    if trailer is None:
        return
    with open(path, "rb") as fh:  # the marker may be followed by padding or other data
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 4096))
        end = fh.read()
    if trailer not in end:
        raise InputError(path, f"truncated: a complete {Path(path).suffix.lstrip('.').upper()} "
                               "file ends with its end marker and this one does not; copy or "
                               "download it again")


def image_header(path: Path, max_raster_values: int | None = None) -> dict:
    """Size, bands, type and georeferencing of an image, read from its header only (and, for
    PNG and JPEG, its last bytes, which show whether it is complete). The image is opened as
    every dataset image is (`nadir.raster.opener`): by its suffix's driver, its declared size within
    `max_raster_values` (None: the schema's `rasters.max_values`). Georeferencing a PNG or JPEG
    keeps in a sidecar beside it is read from there (nadir.raster.georeferencing); GDAL's PAM stays
    off, so nothing is written beside the image."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    from nadir.raster.opener import DATASET_IMAGE, open_raster

    with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(path, DATASET_IMAGE, max_raster_values) as src:
            header = {"width": src.width, "height": src.height, "bands": src.count,
                      "dtype": src.dtypes[0]}
            crs, transform = src.crs, src.transform
    _check_trailer(path)
    crs, transform = local_georeferencing(path, crs, transform)
    if crs is None or transform is None:  # half a georeferencing places nothing
        crs = transform = None
    return {**header, "crs": crs, "transform": transform}


def _check_inside(polygon: list[float], width: int, height: int, label: Path, line: int):
    if polygon_outside(polygon, width, height):
        raise InputError(
            label, f"polygon lies entirely outside the {width}x{height} image: {polygon}", line
        )


def index_sample(sources: list[SceneSource], classes: list[str], tables: IndexTables,
                 max_raster_values: int | None = None) -> dict:
    """The sample's index: parse every scene's DOTA-style labels and image header; write the
    tables; return counts. (Fetched datasets: `nadir.index.normalise.index_fetched`.)"""
    tables.make_folders()
    scenes, annotations = [], []
    for n, src in enumerate(sources, start=1):
        check_name(src.scene, src.image, "scene name")
        if not src.image.exists():
            raise InputError(src.image,
                             "image not found; every label file needs an image of the same name")
        header = image_header(src.image, max_raster_values)
        labels = parse_label_file(src.label, classes)
        for i, obj in enumerate(labels.objects):
            _check_inside(obj.polygon, header["width"], header["height"], src.label, obj.line)
            annotations.append(Annotation(src.scene, i, obj.category, obj.difficult, obj.polygon))
        scenes.append({"scene": src.scene, "split": src.split, **header,
                       "gsd": "" if labels.gsd is None else labels.gsd,
                       "objects": len(labels.objects)})
        if n % 50 == 0 or n == len(sources):
            log.info("indexed %d/%d scenes", n, len(sources))
    write_tables(tables, scenes, annotations, classes)
    counts = {"scenes": len(scenes), "objects": len(annotations)}
    tables.summary.write_text(json.dumps({"format": "sample", **counts}, indent=1) + "\n")
    return counts


def write_tables(tables: IndexTables, scenes: list[dict], annotations: list[Annotation],
                 classes: list[str]) -> None:
    write_scene_table(tables.scenes, scenes)
    with open(tables.annotations, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ANNOTATION_FIELDS)
        writer.writerows(annotation_row(a) for a in annotations)
    write_categories(tables.categories, classes)


def write_scene_table(path: Path, scenes: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, SCENE_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(scenes)


def annotation_row(a: Annotation) -> list:
    """One row of annotations.csv (ANNOTATION_FIELDS order)."""
    return [a.scene, a.object, a.category, a.difficult, format_polygon(a.polygon)]


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
