"""The tests' own measure of how much two oriented outlines overlap: the oracle the rotated NMS
(nadir.core.geometry) and the oriented model are checked against."""

from __future__ import annotations

from collections.abc import Sequence

from nadir.core.geometry import to_shape


def polygon_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two flat polygons' areas (0 when both are empty)."""
    first, second = to_shape(a), to_shape(b)
    inter = first.intersection(second).area
    union = first.area + second.area - inter
    return float(inter / union) if union > 0 else 0.0
