"""A scene's pixels as chips see them: the bands chosen, values mapped to 8 bits, read errors named.

Chipping and inference both read through `Radiometry`, so a model sees at inference the
pixels it saw at training: the same bands in the same order, stretched from the same
per-scene percentiles (non-8-bit input), decoded by GDAL with the same errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rasterio.errors import RasterioError
from rasterio.windows import Window

from nadir.core.errors import InputError
from nadir.raster.chip_params import ChipParams

log = logging.getLogger(__name__)

STRETCH_SAMPLE_PX = 1024  # the longest side of the decimated read used for percentiles


def undecodable(src, scene: str | None, window: Window, exc: Exception) -> InputError:
    """GDAL's failure to decode a window (a truncated or corrupt file) as an InputError naming
    the file, the scene, the window in pixel offsets and GDAL's message."""
    x0, y0 = int(window.col_off), int(window.row_off)
    x1, y1 = x0 + int(window.width), y0 + int(window.height)
    return InputError(src.name, f"cannot read its pixels in window x {x0}-{x1}, y {y0}-{y1} "
                                f"(pixel offsets) of scene {scene or Path(src.name).stem}; "
                                f"GDAL: {exc}. The file is truncated or corrupt: copy or "
                                "download it again")


def named_read(src, scene: str | None, window: Window, read: Callable[[], np.ndarray]):
    """`read()`, GDAL's errors named by `undecodable`."""
    try:
        return read()
    except RasterioError as exc:
        raise undecodable(src, scene, window, exc) from None


def band_indices(src, bands: tuple[int | str, ...] | None) -> list[int]:
    """The 1-based indices of `bands` (indices, or the raster's band descriptions) in `src`;
    an InputError naming the file, the bands it lacks and the bands it has otherwise."""
    if bands is None:
        return [1, 2, 3] if src.count >= 3 else [1]
    descriptions = [d or "" for d in src.descriptions]
    missing = [b for b in bands if (b not in descriptions if isinstance(b, str)
                                    else not 1 <= b <= src.count)]
    if missing:
        has = ", ".join(f"{i} ({d})" if d else str(i) for i, d in enumerate(descriptions, 1))
        raise InputError(src.name, f"lacks band(s) {missing} that the chips (and models) use "
                                   f"{list(bands)}; it has {src.count} band(s): {has}")
    return [descriptions.index(b) + 1 if isinstance(b, str) else b for b in bands]


class Radiometry:
    """Selects bands and maps a scene's pixel values to 8 bits, or keeps them (`stretch`)."""

    def __init__(self, src, params: ChipParams, scene: str | None = None):
        self.scene = scene
        self.bands = band_indices(src, params.bands)
        self.scale: tuple[np.ndarray, np.ndarray] | None = None
        self.dtype = np.dtype(src.dtypes[0])
        if self.dtype != np.uint8 and params.stretch:
            self.scale = self._percentiles(src, params.stretch_percentiles)
            self.dtype = np.dtype(np.uint8)

    def _percentiles(self, src, percentiles: tuple[float, float]):
        """Per-band (low, high) from a decimated read (overviews when the file has them)."""
        factor = max(1, int(np.ceil(max(src.width, src.height) / STRETCH_SAMPLE_PX)))
        shape = (len(self.bands), max(1, src.height // factor), max(1, src.width // factor))
        sample = named_read(src, self.scene, Window(0, 0, src.width, src.height),
                            lambda: src.read(self.bands, out_shape=shape, masked=True))
        lows, highs = [], []
        for band in sample:
            values = band.compressed().astype(np.float64)
            values = values[np.isfinite(values)]  # float scenes may hold NaN without nodata
            lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
            lows.append(lo)
            highs.append(hi if hi > lo else lo + 1)
        log.info("%s: stretching bands %s from percentiles %s: low %s, high %s", src.name,
                 self.bands, list(percentiles), [round(v, 3) for v in lows],
                 [round(v, 3) for v in highs])
        return np.array(lows, dtype=np.float32), np.array(highs, dtype=np.float32)

    def to_8bit(self, pixels: np.ndarray, out: np.ndarray) -> None:
        """Stretch (bands, rows, cols) pixels in the file's type into uint8 `out` (the chip)."""
        lo, hi = (v[:, None, None] for v in self.scale)
        scaled = (pixels.astype(np.float32) - lo) * (255.0 / (hi - lo)) + 0.5
        np.clip(scaled, 0, 255, out=scaled)
        np.copyto(out, scaled, casting="unsafe")  # truncates, as astype(np.uint8) does


def rgb_composite(chip: np.ndarray, rgb: tuple[int, int, int] | None,
                  scale: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """A (3, h, w) uint8 picture of a (bands, h, w) chip: the bands at `rgb` (the first band
    as grey where there are none), values of other types than uint8 mapped from `scale`
    ((low, high) per band of the chip; None: the picture's own 2nd and 98th percentiles)."""
    if rgb is None or len(chip) == 1:
        rgb = None
    picture = chip[list(rgb)] if rgb is not None else np.repeat(chip[:1], 3, axis=0)
    if picture.dtype == np.uint8:
        return picture
    if scale is None:
        values = picture.reshape(3, -1).astype(np.float64)
        lows, highs = np.percentile(values, 2, axis=1), np.percentile(values, 98, axis=1)
    else:
        places = list(rgb) if rgb is not None else [0, 0, 0]
        lows, highs = scale[0][places], scale[1][places]
    lo, hi = lows[:, None, None], np.maximum(highs, lows + 1e-6)[:, None, None]
    return (np.clip((picture - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)
