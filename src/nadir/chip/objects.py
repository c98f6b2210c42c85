"""Which objects a chip keeps: clipped to the window, kept when enough of them shows.

An object is clipped to the part of the chip window that lies inside the scene; it is kept
when at least `min_visible` of its whole area is inside, and marked truncated when any of it is
outside. Its box is the bounds of the clipped polygon(s). Fragments below the threshold are
dropped and counted. Chips with no kept object are kept at rate `empty_keep`, decided by a hash
of (seed, scene, window), so the same config always keeps the same chips.
"""

from __future__ import annotations

import random

import numpy as np
import shapely
from shapely.geometry import box

from nadir.datasets.tables import Annotation

EPS = 1e-9


class SceneObjects:
    """A scene's objects as vertex arrays with bounds, so each chip only clips the objects it
    touches, all of them in a few vectorised shapely calls.

    Shapes are built per window from the touching objects' vertices: an object is touched by a
    few windows only, and shapely geometries for every object of a scene would cost memory
    that grows with the scene. Objects wholly inside a window are kept as they are (vertex
    order included), without an intersection; only those crossing its border are clipped.
    """

    def __init__(self, annotations: list[Annotation], width: int, height: int):
        self.annotations = annotations
        self.width, self.height = width, height
        self.vertices = [np.asarray(ann.polygon, dtype=np.float64).reshape(-1, 2)
                         for ann in annotations]
        self.bounds = np.array([[*v.min(0), *v.max(0)] for v in self.vertices]).reshape(-1, 4)

    def shapes(self, indices: np.ndarray) -> np.ndarray:
        """The objects' polygons, made valid where they are not (self-crossing outlines).

        Repairs keep only polygons: a line or point left by a spike of the outline (which the
        default repair returns beside the polygons, in a collection) has no area to chip."""
        rings = [self.vertices[i] for i in indices]
        coords = np.concatenate([np.vstack([r, r[:1]]) for r in rings])
        ring_of = np.repeat(np.arange(len(rings)), [len(r) + 1 for r in rings])
        shapes = shapely.polygons(shapely.linearrings(coords, indices=ring_of))
        invalid = ~shapely.is_valid(shapes)
        if invalid.any():
            shapes[invalid] = shapely.make_valid(shapes[invalid], method="structure",
                                                 keep_collapsed=False)
        return shapes

    def clip(self, x0: int, y0: int, size: int,
             min_visible: float) -> tuple[list[dict], int, set[int]]:
        """Objects visible in one chip window: (kept objects, dropped fragments, kept ids)."""
        x1, y1 = min(x0 + size, self.width), min(y0 + size, self.height)
        b = self.bounds
        touching = np.flatnonzero((b[:, 2] > x0) & (b[:, 0] < x1) & (b[:, 3] > y0)
                                  & (b[:, 1] < y1))
        if not len(touching):
            return [], 0, set()
        shapes = self.shapes(touching)
        areas = shapely.area(shapes)
        tb = b[touching]
        inside = (tb[:, 0] >= x0) & (tb[:, 1] >= y0) & (tb[:, 2] <= x1) & (tb[:, 3] <= y1)
        parts = shapes.copy()
        crossing = ~inside & (areas > 0)
        if crossing.any():
            parts[crossing] = shapely.intersection(shapes[crossing], box(x0, y0, x1, y1))
        # Lines and points an intersection may leave have no area, so this is the polygons'.
        visible = np.divide(shapely.area(parts), areas, out=np.zeros(len(areas)),
                            where=areas > 0)
        seen = visible > 0
        keep = np.flatnonzero(seen & (visible + EPS >= min_visible))
        if not len(keep):
            return [], int(seen.sum()), set()
        # Every polygon with an area of every kept object, in object order (`owner`).
        geoms, owner = shapely.get_parts(parts[keep], return_index=True)
        polygonal = (shapely.get_type_id(geoms) == 3) & (shapely.area(geoms) > 0)
        geoms, owner = geoms[polygonal], owner[polygonal]
        bounds = shapely.bounds(geoms)
        firsts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        low = np.minimum.reduceat(bounds[:, :2], firsts)
        high = np.maximum.reduceat(bounds[:, 2:], firsts)
        boxes = np.round(np.hstack([low - (x0, y0), high - low]), 2).tolist()
        coords, ring = shapely.get_coordinates(shapely.get_exterior_ring(geoms),
                                               return_index=True)
        coords = np.round(coords - (x0, y0), 2).tolist()
        polygons: list[list] = [[] for _ in keep]
        start = 0
        for own, end in zip(owner.tolist(), np.cumsum(np.bincount(ring)).tolist(), strict=True):
            polygons[own].append([v for xy in coords[start:end - 1] for v in xy])  # open ring
            start = end
        kept, kept_ids = [], set()
        shares = np.round(visible[keep], 6).tolist()
        truncated = (visible[keep] < 1 - 1e-6).tolist()
        for k, j in enumerate(keep.tolist()):
            ann = self.annotations[touching[j]]
            kept.append({"object": ann.object, "category": ann.category,
                         "difficult": ann.difficult, "truncated": truncated[k],
                         "visible": shares[k], "bbox": boxes[k], "polygons": polygons[k]})
            kept_ids.add(ann.object)
        return kept, int(seen.sum()) - len(keep), kept_ids


def keep_empty(seed: int, scene: str, x0: int, y0: int, rate: float) -> bool:
    """A reproducible coin flip per window (string seeds hash identically across runs)."""
    coin = random.Random(f"{seed}:{scene}:{x0}:{y0}")  # noqa: S311 - reproducible, no secret
    return coin.random() < rate
