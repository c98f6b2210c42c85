"""RarePlanes (real): one GeoJSON of aircraft polygons per scene or per 512 px tile.

Polygons are in geographic coordinates (the GeoJSON's CRS, EPSG:4326 unless it names another);
they are moved into the image's CRS and then through the inverse of its geotransform into
pixels. The class is the value of a configurable property (`role` by default); class names are
whatever values the data holds, so the class list is derived from the data and written to
categories.json rather than assumed. Where the data also numbers the values (`role_id` beside
`role`), those numbers are the class ids, so they are RarePlanes' own and the same whichever
subset was fetched; otherwise ids follow the sorted values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nadir.core.errors import InputError
from nadir.datasets.records import BadInput, read_label_text

GEOJSON_DEFAULT_CRS = "EPSG:4326"


@dataclass
class PlaneObject:
    feature: int
    category: str
    polygon: list[float]  # pixel x y pairs of the exterior ring, not closed
    class_id: int | None = None  # the data's own number for the class (`role_id`), if any


def _crs_of(collection: dict) -> str:
    """The CRS a GeoJSON names (old-style `crs` member), else GeoJSON's default WGS 84."""
    name = (collection.get("crs") or {}).get("properties", {}).get("name")
    return name or GEOJSON_DEFAULT_CRS


def _exterior(geometry: dict) -> list[list[float]] | None:
    if not isinstance(geometry, dict):
        return None
    coords = geometry.get("coordinates")
    try:
        if geometry.get("type") == "Polygon":
            ring = coords[0]
        elif geometry.get("type") == "MultiPolygon":
            ring = max((p[0] for p in coords), key=len)
        else:
            return None
        ring = [[float(x), float(y)] for x, y, *_ in ring]
    except (TypeError, ValueError, IndexError):
        return None
    if len(ring) > 1 and ring[0] == ring[-1]:
        ring = ring[:-1]
    return ring if len(ring) >= 3 else None


def class_value(value) -> str:
    """Property values as class names: 2 and 2.0 both become "2"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def class_sort_key(name: str) -> tuple:
    """Numbers in numeric order first, then names alphabetically."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def read_objects(path: Path, attribute: str, image_crs: str | None,
                 transform: list[float] | None, bad: BadInput) -> list[PlaneObject]:
    """Pixel-space aircraft of one label file, using the image's CRS and geotransform.

    `transform` is the affine geotransform as (a, b, c, d, e, f) (rasterio's order).
    """
    from affine import Affine
    from rasterio.warp import transform as warp

    if transform is None or image_crs is None:
        raise InputError(path, "its image has no georeferencing (CRS and geotransform), so the "
                               "geographic polygons cannot be placed in pixels; a PNG tile keeps "
                               "it in a sidecar `<tile>.png.aux.xml` beside it, which the "
                               "source must hold too")
    try:
        collection = json.loads(read_label_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc.msg}", exc.lineno) from None
    features = collection.get("features") if isinstance(collection, dict) else None
    if not isinstance(features, list):
        raise InputError(path, "expected a GeoJSON FeatureCollection with a features array")
    inverse = ~Affine(*transform)
    source_crs = _crs_of(collection)
    objects = []
    for number, feature in enumerate(features, start=1):
        props = (feature or {}).get("properties") or {}
        ring = _exterior((feature or {}).get("geometry"))
        if ring is None:
            bad.report("malformed_record", str(path),
                       f"feature {number}: needs a Polygon or MultiPolygon geometry")
            continue
        if props.get(attribute) is None:
            bad.report("malformed_record", str(path),
                       f"feature {number}: has no value for the class attribute {attribute!r}; "
                       f"its properties are {sorted(props)}")
            continue
        class_id = props.get(f"{attribute}_id")
        if class_id is not None:
            try:
                class_id = int(class_id)
            except (TypeError, ValueError):
                class_id = 0
            if class_id < 1:
                bad.report("malformed_record", str(path), f"feature {number}: {attribute}_id "
                           f"{props[f'{attribute}_id']!r} is not a positive integer")
                continue
        xs, ys = warp(source_crs, image_crs, [p[0] for p in ring], [p[1] for p in ring])
        pixels = [v for x, y in zip(xs, ys, strict=True) for v in inverse @ (x, y)]
        objects.append(PlaneObject(number, class_value(props[attribute]), pixels, class_id))
    return objects


def class_ids(parsed: dict[str, list[PlaneObject]], attribute: str) -> dict[str, int] | None:
    """{class name: the data's own id} when every object carries `<attribute>_id` (one id per
    name, one name per id); None when none does (ids then follow the sorted names). `parsed`
    maps each label file to its objects, for the errors."""
    ids: dict[str, int] = {}
    names: dict[int, str] = {}
    without = None
    for label, objects in parsed.items():
        for obj in objects:
            if obj.class_id is None:
                without = without or (label, obj.feature)
                continue
            known_id = ids.setdefault(obj.category, obj.class_id)
            known_name = names.setdefault(obj.class_id, obj.category)
            if (known_id, known_name) != (obj.class_id, obj.category):
                earlier = (f"earlier features give {obj.category!r} the id {known_id}"
                           if known_id != obj.class_id else
                           f"earlier features give that id to {known_name!r}")
                raise InputError(label, f"feature {obj.feature}: {attribute} {obj.category!r} "
                                        f"with {attribute}_id {obj.class_id}; {earlier}")
    if ids and without:
        raise InputError(without[0], f"feature {without[1]}: no {attribute}_id, where other "
                                     f"features number their {attribute}")
    return ids or None
