"""The embedded `sample` dataset: synthetic overhead scenes generated from a seed.

Scenes are 3-band 8-bit georeferenced GeoTIFFs with DOTA-format labels, laid out as DOTA is
(`<split>/images/<scene>.tif`, `<split>/labelTxt/<scene>.txt`), so the same parsing, chipping
and training code serves the sample and real data. Three classes of different sizes (planes,
storage tanks, small vehicles), most of them rotated; objects are placed anywhere in the scene,
so many cross chip borders.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from nadir.datasets.dota import LabelFile, LabelObject, format_label_file

log = logging.getLogger(__name__)

CLASSES = ["plane", "storage-tank", "small-vehicle"]
GSD_M = 0.5
CRS = "EPSG:32633"


@dataclass(frozen=True)
class SampleSpec:
    """The sample's settings (the dataset's keys of format `sample`)."""

    train_scenes: int
    val_scenes: int
    scene_size: int
    objects_per_scene: int
    seed: int

    def scenes(self) -> list[tuple[str, str]]:
        """(split, scene id) for every scene, in a fixed order."""
        return [("train", f"T{i:04d}") for i in range(self.train_scenes)] + [
            ("val", f"V{i:04d}") for i in range(self.val_scenes)
        ]


SPEC_KEYS = [f.name for f in fields(SampleSpec)]


def _rotate(points: np.ndarray, angle: float, centre: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.asarray(centre)


def _rectangle(length: float, width: float) -> np.ndarray:
    hl, hw = length / 2, width / 2
    return np.array([[-hl, -hw], [hl, -hw], [hl, hw], [-hl, hw]])


def _draw_plane(draw: ImageDraw.ImageDraw, rng: np.random.Generator, centre, colour):
    length = rng.uniform(36, 56)
    span = length * rng.uniform(0.8, 1.0)
    angle = rng.uniform(0, 2 * math.pi)
    fuselage = _rotate(_rectangle(length, length * 0.16), angle, centre)
    wing_centre = _rotate(np.array([[length * 0.05, 0.0]]), angle, centre)[0]
    wings = _rotate(_rectangle(length * 0.22, span), angle, wing_centre)
    tail_centre = _rotate(np.array([[-length * 0.42, 0.0]]), angle, centre)[0]
    tail = _rotate(_rectangle(length * 0.1, span * 0.38), angle, tail_centre)
    for part in (fuselage, wings, tail):
        draw.polygon([tuple(p) for p in part], fill=colour)
    # The oriented box covers the whole silhouette (the wings sit slightly forward of centre).
    box = _rotate(_rectangle(length, span), angle, centre)
    return box, (length + span) / 2 * 0.6


def _draw_tank(draw: ImageDraw.ImageDraw, rng: np.random.Generator, centre, colour):
    radius = rng.uniform(9, 16)
    x, y = centre
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    inner = radius * 0.55
    shade = tuple(int(v * 0.8) for v in colour)
    draw.ellipse([x - inner, y - inner, x + inner, y + inner], fill=shade)
    box = np.array([[x - radius, y - radius], [x + radius, y - radius],
                    [x + radius, y + radius], [x - radius, y + radius]])
    return box, radius


def _draw_vehicle(draw: ImageDraw.ImageDraw, rng: np.random.Generator, centre, colour):
    length, width = rng.uniform(16, 24), rng.uniform(8, 11)
    angle = rng.uniform(0, 2 * math.pi)
    box = _rotate(_rectangle(length, width), angle, centre)
    draw.polygon([tuple(p) for p in box], fill=colour)
    return box, length / 2


_PAINTERS = {"plane": _draw_plane, "storage-tank": _draw_tank, "small-vehicle": _draw_vehicle}
_COLOURS = {
    "plane": [(235, 235, 240), (210, 215, 225), (250, 250, 250)],
    "storage-tank": [(245, 240, 220), (200, 200, 195), (230, 225, 235)],
    "small-vehicle": [(200, 40, 40), (40, 60, 190), (30, 30, 30), (240, 200, 40)],
}


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.uniform(60, 140, size=3)
    coarse = rng.normal(0, 18, size=(size // 32 + 2, size // 32 + 2, 3))
    coarse_img = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8))
    smooth = np.asarray(coarse_img.resize((size, size), Image.BICUBIC), dtype=np.float32) - 128
    fine = rng.normal(0, 6, size=(size, size, 3))
    pixels = np.clip(base + smooth + fine, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def generate_scene(rng: np.random.Generator, size: int, n_objects: int) -> tuple[Image.Image, list]:
    """Draw one scene; returns the image and (class, polygon) of every object."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float]] = []
    objects = []
    margin = 32
    attempts = 0
    while len(objects) < n_objects and attempts < n_objects * 50:
        attempts += 1
        category = CLASSES[int(rng.integers(len(CLASSES)))]
        centre = tuple(float(v) for v in rng.uniform(margin, size - margin, size=2))
        if any(math.dist(centre, (x, y)) < r + 34 for x, y, r in placed):
            continue
        palette = _COLOURS[category]
        colour = palette[int(rng.integers(len(palette)))]
        polygon, radius = _PAINTERS[category](draw, rng, centre, colour)
        placed.append((*centre, radius))
        objects.append((category, polygon))
    image = image.filter(ImageFilter.GaussianBlur(radius=0.6))
    return image, objects


def write_scene(spec: SampleSpec, split: str, scene: str, image_path: Path, label_path: Path):
    """Generate one scene deterministically from (seed, scene id) and write image and labels."""
    import rasterio
    from rasterio.transform import from_origin

    index = spec.scenes().index((split, scene))
    rng = np.random.default_rng([spec.seed, index])
    image, objects = generate_scene(rng, spec.scene_size, spec.objects_per_scene)
    pixels = np.asarray(image).transpose(2, 0, 1)
    origin_x = 500_000.0 + index * spec.scene_size * GSD_M * 1.5
    transform = from_origin(origin_x, 5_000_000.0, GSD_M, GSD_M)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GDAL_PAM_ENABLED", "NO")
    with rasterio.open(
        image_path, "w", driver="GTiff", width=spec.scene_size, height=spec.scene_size, count=3,
        dtype="uint8", crs=CRS, transform=transform, tiled=True, blockxsize=256, blockysize=256,
        compress="deflate", photometric="RGB",
    ) as dst:
        dst.write(pixels)
    label = LabelFile(
        path=str(label_path), imagesource="nadir-sample", gsd=GSD_M,
        objects=[LabelObject([float(v) for v in poly.reshape(-1)], cat, 0, 0)
                 for cat, poly in objects],
    )
    label_path.write_text(format_label_file(label), encoding="utf-8")


def write_split(spec: SampleSpec, split: str, folder: Path) -> None:
    """Every scene of one split in DOTA's layout: `folder/images/<scene>.tif` and
    `folder/labelTxt/<scene>.txt`."""
    scenes = [scene for scene_split, scene in spec.scenes() if scene_split == split]
    for n, scene in enumerate(scenes, start=1):
        write_scene(spec, split, scene, folder / "images" / f"{scene}.tif",
                    folder / "labelTxt" / f"{scene}.txt")
        if n % 10 == 0 or n == len(scenes):
            log.info("generated %d/%d %s scenes", n, len(scenes), split)
