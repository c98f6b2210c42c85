"""What inference delivers per scene and run: a GeoJSON in EPSG:4326, a GeoPackage in the scene's
CRS (each feature with class, score, model and the run's digest), and a quick-look PNG drawn
from the windows as they passed (nothing is read twice for it). A scene without a CRS gets
pixel coordinates (y down) in both files, and a warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nadir.predict.detect import SceneResult

PALETTE = [(255, 64, 64), (64, 160, 255), (255, 200, 0), (0, 220, 120), (220, 0, 220),
           (0, 230, 230), (255, 128, 0), (160, 100, 255)]


def pixel_outline(detection: dict) -> list[tuple[float, float]]:
    """A detection's outline in scene pixels: its polygon when the model gives one (oriented
    detectors), else its box; closed ring."""
    if detection.get("polygon"):
        p = detection["polygon"]
        ring = list(zip(p[0::2], p[1::2], strict=True))
    else:
        x, y, w, h = detection["bbox"]
        ring = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    return ring + ring[:1]


def to_crs_coordinates(ring: list[tuple[float, float]], transform) -> list[tuple[float, float]]:
    """Scene pixels (column, row) to the scene's CRS by its affine transform (a, b, c, d, e, f)."""
    a, b, c, d, e, f = transform
    return [(a * x + b * y + c, d * x + e * y + f) for x, y in ring]


def feature_properties(detection: dict, names: dict[int, str], run: dict,
                       digest: str, scene: str) -> dict:
    return {"class": names[detection["category_id"]], "category_id": detection["category_id"],
            "score": detection["score"], "model": run["model"], "dataset": run["dataset"],
            "run_digest": digest, "scene": scene}


def write_geojson(result: SceneResult, rings: list, properties: list[dict], path: Path) -> None:
    """EPSG:4326 (longitude, latitude) per RFC 7946; pixel coordinates without a CRS."""
    from rasterio.warp import transform as reproject

    features = []
    for ring, props in zip(rings, properties, strict=True):
        if result.georeferenced:
            ring = to_crs_coordinates(ring, result.transform)
            xs, ys = reproject(result.crs, "EPSG:4326", [p[0] for p in ring],
                               [p[1] for p in ring])
            ring = list(zip(xs, ys, strict=True))
        features.append({"type": "Feature", "properties": props, "geometry": {
            "type": "Polygon", "coordinates": [[[float(x), float(y)] for x, y in ring]]}})
    collection = {"type": "FeatureCollection", "name": result.scene, "features": features}
    if not result.georeferenced:
        collection["nadir:coordinates"] = "pixel (column, row) of the scene, y down"
    path.write_text(json.dumps(collection) + "\n")


def write_geopackage(result: SceneResult, rings: list, properties: list[dict],
                     path: Path) -> None:
    """One `detections` layer in the scene's CRS (pixel coordinates without one)."""
    import pyogrio.raw
    import shapely

    coords = [to_crs_coordinates(r, result.transform) if result.georeferenced else r
              for r in rings]
    geometry = shapely.to_wkb(np.array([shapely.Polygon(c) for c in coords], dtype=object))
    fields = ["class", "category_id", "score", "model", "dataset", "run_digest", "scene"]
    types = {"class": object, "category_id": np.int64, "score": np.float64, "model": object,
             "dataset": object, "run_digest": object, "scene": object}
    data = [np.array([p[f] for p in properties], dtype=types[f]) for f in fields]
    if path.exists():
        path.unlink()  # OGR would add a second layer to an old file
    pyogrio.raw.write(str(path), geometry=np.asarray(geometry, dtype=object), field_data=data,
                      fields=fields, layer="detections", driver="GPKG", geometry_type="Polygon",
                      crs=result.crs)


def write_quicklook(result: SceneResult, names: dict[int, str], path: Path,
                    min_score: float) -> None:
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(result.quicklook.transpose(1, 2, 0)))
    draw = ImageDraw.Draw(image)
    step = max(1, -(-max(result.width, result.height) // max(image.size)))
    ids = sorted(names)
    for det in result.detections:
        if det["score"] >= min_score:
            ring = [(x / step, y / step) for x, y in pixel_outline(det)]
            draw.line(ring, fill=PALETTE[ids.index(det["category_id"]) % len(PALETTE)], width=2)
    for n, cid in enumerate(ids):  # a legend in the top-left corner
        draw.rectangle([4, 4 + 14 * n, 14, 14 + 14 * n], fill=PALETTE[n % len(PALETTE)])
        draw.text((18, 3 + 14 * n), names[cid], fill=(255, 255, 255))
    image.save(path, "PNG")
