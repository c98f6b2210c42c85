"""Polygons and oriented (rotated) boxes in pixels: bounds, areas, the COCO `rbox` field, polygon
IoU and NMS.

An rbox is `[cx, cy, w, h, angle]` in pixels of the image it belongs to, `angle` in degrees:

- `w` is the long side (`w >= h`) and `angle` the direction of that side, measured from the
  image's +x axis towards its +y axis. Image y points down, so a positive angle turns clockwise
  on screen. It lies in [-90, 90): a rectangle and its half-turn are the same box.
- A square (sides equal to 1e-6 relative) has no long side; its angle lies in [-45, 45).
- The corners (`rbox_to_polygon`) are centre + R(angle) (±w/2, ±h/2), in the order
  (-w/2, -h/2), (+w/2, -h/2), (+w/2, +h/2), (-w/2, +h/2).

An annotation's rbox is the minimum-area rectangle around all vertices of its `segmentation`
polygons, so the two always agree. A detection of an oriented model carries its 4 corners as
`polygon: [x1, y1, ..., x4, y4]` beside the enclosing axis-aligned `bbox`.

No torch here: indexing, the COCO stage, the scene merge and the report use it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPoint, Polygon
from shapely.validation import make_valid

SQUARE_TOLERANCE = 1e-6


def canonical_angle(angle: float, square: bool) -> float:
    """The angle in [-90, 90) (in [-45, 45) for a square), in degrees."""
    period = 90.0 if square else 180.0
    folded = (angle + period / 2) % period - period / 2
    return 0.0 if folded == -0.0 else folded


def rbox_from_polygon(polygons: Sequence[Sequence[float]], digits: int = 2) -> list[float]:
    """The minimum-area rectangle around every vertex of `polygons` (flat x, y lists)."""
    points = [(x, y) for p in polygons for x, y in zip(p[0::2], p[1::2], strict=True)]
    if not points:
        raise ValueError("an rbox needs at least one vertex")
    envelope = shapely.oriented_envelope(MultiPoint(points))
    if envelope.geom_type == "Polygon":
        corners = np.asarray(envelope.exterior.coords)[:4]
        edges = [corners[1] - corners[0], corners[2] - corners[1]]
    elif envelope.geom_type == "LineString":  # collinear vertices: a box of no height
        ends = np.asarray(envelope.coords)
        corners, edges = ends, [ends[1] - ends[0], np.zeros(2)]
    else:  # one point
        corners, edges = np.asarray(envelope.coords), [np.zeros(2), np.zeros(2)]
    lengths = [float(np.hypot(*e)) for e in edges]
    long_side = 0 if lengths[0] >= lengths[1] else 1
    w, h = lengths[long_side], lengths[1 - long_side]
    angle = math.degrees(math.atan2(edges[long_side][1], edges[long_side][0]))
    square = w - h <= SQUARE_TOLERANCE * max(w, 1.0)
    cx, cy = corners.mean(axis=0)
    return [round(float(cx), digits), round(float(cy), digits), round(w, digits),
            round(h, digits), round(canonical_angle(angle, square), digits)]


def rbox_to_polygon(rbox: Sequence[float]) -> list[float]:
    """The 4 corners of an rbox, flat [x1, y1, ..., x4, y4] (order in the module docstring)."""
    cx, cy, w, h, angle = rbox
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    corners = []
    for u, v in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        corners += [cx + c * u - s * v, cy + s * u + c * v]
    return corners


def shift_polygon(polygon: Sequence[float], dx: float, dy: float) -> list[float]:
    """The polygon moved by (dx, dy): chip pixels to scene pixels."""
    return [v + (dx if i % 2 == 0 else dy) for i, v in enumerate(polygon)]


def box_outside(xmin: float, ymin: float, xmax: float, ymax: float, width: int,
                height: int) -> bool:
    """Whether a box lies entirely outside a width x height image (touching its edge counts)."""
    return xmax <= 0 or ymax <= 0 or xmin >= width or ymin >= height


def polygon_outside(polygon: list[float], width: int, height: int) -> bool:
    """`box_outside` for the bounds of a polygon (x y pairs in pixels)."""
    xs, ys = polygon[0::2], polygon[1::2]
    xmax, ymax = max(xs), max(ys)
    return box_outside(min(xs), min(ys), xmax, ymax, width, height)


def polygon_area(polygon: list[float]) -> float:
    """Area in square pixels of a polygon (x y pairs); a self-intersecting one is repaired
    first (shapely's make_valid), so a bow-tie counts both its lobes instead of their
    difference."""
    return float(to_shape(polygon).area)


def to_shape(polygon: Sequence[float]) -> Polygon:
    """A valid shapely polygon (self-crossing outlines are repaired, as in the chip stage)."""
    shape = Polygon(list(zip(polygon[0::2], polygon[1::2], strict=True)))
    return shape if shape.is_valid else make_valid(shape)


def pairs_in_groups(shapes: np.ndarray, groups: np.ndarray,
                    predicate: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of every pair i < j of one group that shapely's STRtree finds: with `predicate`
    None, those whose bounding boxes intersect."""
    first, second = shapely.STRtree(shapes).query(shapes, predicate=predicate)
    wanted = (first < second) & (groups[first] == groups[second])
    return first[wanted], second[wanted]


def overlapping_pairs(shapes: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, ...]:
    """(i, j, IoU) of every pair i < j of one group whose shapes intersect."""
    first, second = pairs_in_groups(shapes, groups, "intersects")
    inter = shapely.area(shapely.intersection(shapes[first], shapes[second]))
    areas = shapely.area(shapes)
    union = areas[first] + areas[second] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return first, second, iou


def box_pairs(boxes: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, ...]:
    """(i, j, IoU) of every pair i < j of one group whose `[x1, y1, x2, y2]` boxes intersect,
    the IoU computed in float64 with the operations of torchvision's CPU NMS kernel."""
    first, second = pairs_in_groups(shapely.box(*boxes.T), groups)
    x1, y1, x2, y2 = boxes.T
    width = np.maximum(np.minimum(x2[first], x2[second]) - np.maximum(x1[first], x1[second]), 0)
    height = np.maximum(np.minimum(y2[first], y2[second]) - np.maximum(y1[first], y1[second]), 0)
    inter = width * height
    areas = (x2 - x1) * (y2 - y1)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 for empty boxes: never kept
        return first, second, inter / (areas[first] + areas[second] - inter)


def greedy_keep(first: np.ndarray, second: np.ndarray, iou: np.ndarray,
                scores: Sequence[float], iou_threshold: float) -> list[int]:
    """Greedy NMS over overlapping pairs (i, j, IoU), as torchvision's `batched_nms` does it:
    in score order, equal scores in input order, a kept item suppresses every later one it
    overlaps by IoU > `iou_threshold`. Indices kept, in input order."""
    overlapping: dict[int, list[int]] = {}
    over = iou > iou_threshold
    for i, j in zip(first[over].tolist(), second[over].tolist(), strict=True):
        overlapping.setdefault(i, []).append(j)
        overlapping.setdefault(j, []).append(i)
    suppressed: set[int] = set()
    kept = []
    for index in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable").tolist():
        if index in suppressed:
            continue
        kept.append(index)
        suppressed.update(overlapping.get(index, ()))
    return sorted(kept)


def box_nms(boxes: Sequence[Sequence[float]], scores: Sequence[float], groups: Sequence[int],
            iou_threshold: float) -> list[int]:
    """Greedy NMS of `[x1, y1, x2, y2]` boxes within each group (see `greedy_keep`); indices
    kept, in input order: what torchvision's `batched_nms` keeps, without importing torch
    (4.5 of the 5.2 CPU s of the sample's evaluate_scenes job). Only boxes that intersect are
    compared (shapely's STRtree): 200,000 boxes took about 1 s against batched_nms's 8 s
    (bench/nms.py)."""
    if len(boxes) == 0:
        return []
    first, second, iou = box_pairs(np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                                   np.asarray(groups))
    return greedy_keep(first, second, iou, scores, iou_threshold)


def rotated_nms(polygons: Sequence[Sequence[float]], scores: Sequence[float],
                groups: Sequence[int], iou_threshold: float) -> list[int]:
    """Greedy NMS by polygon IoU within each group (see `greedy_keep`); indices kept, in
    input order."""
    if len(polygons) == 0:
        return []
    shapes = np.array([to_shape(p) for p in polygons], dtype=object)
    first, second, iou = overlapping_pairs(shapes, np.asarray(groups))
    return greedy_keep(first, second, iou, scores, iou_threshold)
