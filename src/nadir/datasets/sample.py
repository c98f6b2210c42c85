"""The embedded `sample` dataset: synthetic overhead scenes generated from a seed.

Scenes are 3-band 8-bit georeferenced GeoTIFFs with DOTA-format labels, laid out as DOTA is
(`<split>/images/<scene>.tif`, `<split>/labelTxt/<scene>.txt`), so the same parsing, chipping
and training code serves the sample and real data. Three classes of different sizes (planes,
storage tanks, small vehicles), most of them rotated; objects are placed anywhere in the scene,
so many cross chip borders.

With `bands` > 3 the scenes are multispectral: red, green, blue, then a near-infrared band
(`nir`: bright vegetation-like ground, objects darker by their brightness) and further bands
mixing the others with noise of their own; a fourth class, `nir-vehicle`, is drawn in the
`nir` band only, so no RGB model can see it (docs/multispectral.md). With `bit_depth` 16 the
values are about 40 times the 8-bit ones, with noise in the low bits.
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
NIR_CLASS = "nir-vehicle"  # drawn in the nir band only (scenes of 4 bands or more)
SCALE_16BIT = 40


def classes(bands: int = 3) -> list[str]:
    """The sample's classes for scenes of `bands` bands."""
    return CLASSES + [NIR_CLASS] if bands > 3 else list(CLASSES)


def band_names(bands: int) -> list[str]:
    return ["red", "green", "blue", "nir", *(f"b{i}" for i in range(5, bands + 1))][:bands]
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
    bands: int = 3
    bit_depth: int = 8

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


def _draw_nir_vehicle(draw, rng: np.random.Generator, centre, colour):
    length, width = rng.uniform(24, 32), rng.uniform(12, 16)
    angle = rng.uniform(0, 2 * math.pi)
    box = _rotate(_rectangle(length, width), angle, centre)
    draw.polygon([tuple(p) for p in box], fill=colour)
    return box, length / 2


_PAINTERS = {"plane": _draw_plane, "storage-tank": _draw_tank, "small-vehicle": _draw_vehicle,
             NIR_CLASS: _draw_nir_vehicle}
NIR_VEHICLE_LEVEL = 40  # the nir value of nir-vehicles, on ground of about 150-220


class NirDraw:
    """Draws each shape in RGB and in the nir band at once: an object's nir value is its
    colour's brightness (so it darkens the bright vegetation-like ground less the brighter it
    is); a nir-vehicle (`rgb=None`) only in the nir band."""

    def __init__(self, rgb: ImageDraw.ImageDraw | None, nir: ImageDraw.ImageDraw,
                 nir_value: int | None = None):
        self.rgb, self.nir, self.nir_value = rgb, nir, nir_value

    def _nir_fill(self, fill) -> int:
        return self.nir_value if self.nir_value is not None else int(sum(fill) / 3 * 0.6)

    def polygon(self, points, fill):
        if self.rgb is not None:
            self.rgb.polygon(points, fill=fill)
        self.nir.polygon(points, fill=self._nir_fill(fill))

    def ellipse(self, box, fill):
        if self.rgb is not None:
            self.rgb.ellipse(box, fill=fill)
        self.nir.ellipse(box, fill=self._nir_fill(fill))
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


def generate_scene(rng: np.random.Generator, size: int, n_objects: int,
                   bands: int = 3) -> tuple[Image.Image, list, Image.Image | None]:
    """Draw one scene; returns the RGB image, (class, polygon) of every object and, for more
    than 3 bands, the nir band (an 8-bit image)."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    nir = nir_draw = None
    if bands > 3:
        green = np.asarray(image, dtype=np.float32)[:, :, 1]
        nir = Image.fromarray(np.clip(255 - green * 0.6 + rng.normal(0, 6, green.shape),
                                      0, 255).astype(np.uint8), "L")
        nir_draw = ImageDraw.Draw(nir)
    kinds = classes(bands)
    placed: list[tuple[float, float, float]] = []
    objects = []
    margin = 32
    attempts = 0
    while len(objects) < n_objects and attempts < n_objects * 50:
        attempts += 1
        category = kinds[int(rng.integers(len(kinds)))]
        centre = tuple(float(v) for v in rng.uniform(margin, size - margin, size=2))
        if any(math.dist(centre, (x, y)) < r + 34 for x, y, r in placed):
            continue
        palette = _COLOURS.get(category, _COLOURS["small-vehicle"])
        colour = palette[int(rng.integers(len(palette)))]
        painter = draw if nir_draw is None else NirDraw(
            None if category == NIR_CLASS else draw, nir_draw,
            NIR_VEHICLE_LEVEL if category == NIR_CLASS else None)
        polygon, radius = _PAINTERS[category](painter, rng, centre, colour)
        placed.append((*centre, radius))
        objects.append((category, polygon))
    image = image.filter(ImageFilter.GaussianBlur(radius=0.6))
    if nir is not None:
        nir = nir.filter(ImageFilter.GaussianBlur(radius=0.6))
    return image, objects, nir


def scene_pixels(rng: np.random.Generator, image: Image.Image, nir: Image.Image | None,
                 bands: int, bit_depth: int) -> np.ndarray:
    """(bands, h, w) pixels: RGB, nir, then further bands mixing them with noise of their own;
    16-bit: 40 times the values plus noise in the low bits."""
    pixels = np.asarray(image).transpose(2, 0, 1)
    if nir is not None:
        rgbn = np.concatenate([pixels, np.asarray(nir)[None]]).astype(np.float32)
        extra = [np.clip(rgbn.T @ rng.dirichlet(np.ones(4)) + rng.normal(0, 8, rgbn.shape[1:]).T,
                         0, 255).T for _ in range(bands - 4)]
        pixels = np.concatenate([rgbn, *(e[None] for e in extra)]).astype(np.uint8)
    if bit_depth == 16:
        noise = rng.integers(0, SCALE_16BIT, size=pixels.shape)
        pixels = (pixels.astype(np.uint16) * SCALE_16BIT + noise).astype(np.uint16)
    return pixels


def write_scene(spec: SampleSpec, split: str, scene: str, image_path: Path, label_path: Path):
    """Generate one scene deterministically from (seed, scene id) and write image and labels."""
    import rasterio
    from rasterio.transform import from_origin

    index = spec.scenes().index((split, scene))
    rng = np.random.default_rng([spec.seed, index])
    image, objects, nir = generate_scene(rng, spec.scene_size, spec.objects_per_scene,
                                         spec.bands)
    pixels = scene_pixels(rng, image, nir, spec.bands, spec.bit_depth)
    origin_x = 500_000.0 + index * spec.scene_size * GSD_M * 1.5
    transform = from_origin(origin_x, 5_000_000.0, GSD_M, GSD_M)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GDAL_PAM_ENABLED", "NO")
    with rasterio.open(
        image_path, "w", driver="GTiff", width=spec.scene_size, height=spec.scene_size,
        count=spec.bands, dtype=pixels.dtype.name, crs=CRS, transform=transform, tiled=True,
        blockxsize=256, blockysize=256, compress="deflate",
        photometric="RGB" if spec.bands == 3 and spec.bit_depth == 8 else "MINISBLACK",
    ) as dst:
        dst.write(pixels)
        if spec.bands > 3:
            for index, name in enumerate(band_names(spec.bands), start=1):
                dst.set_band_description(index, name)
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
