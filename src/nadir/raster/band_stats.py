"""Per-band statistics of the train chips (mean, std, percentiles), and the input scaling
models get from them.

Each chip job sums its train chips' valid pixels per band (`BandSums`, in the chip list); the
chip manifest merges the shards' sums into the dataset's statistics (`BandSums.summary`), and
training reads from there how a chip's values reach a model (`InputScaling`): 8-bit chips as
value / 255, as always; chips kept at full bit depth mapped per band from the train chips'
`stretch_percentiles` to 0 and 1, the mapping the 8-bit stretch applies per scene, taken once
for the whole dataset. The scaling is saved in model.pt, so evaluation and inference scale new
pixels exactly as training did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HISTOGRAM_BITS = 12  # integer values are counted in at most 4,096 bins per band


def _binning(dtype: np.dtype) -> tuple[int, int] | None:
    """(offset, shift) that map an integer type's values to histogram bins; None for floats."""
    if dtype.kind not in "ui":
        return None
    info = np.iinfo(dtype)
    return -int(info.min), max(0, info.bits - HISTOGRAM_BITS)


@dataclass
class BandSums:
    """Running per-band sums of pixel values (and a histogram for integer types: a (bands,
    bins) array, added per train chip while chipping, written as lists)."""

    dtype: str
    count: list[int]
    total: list[float]
    squares: list[float]
    histogram: np.ndarray | None

    @classmethod
    def empty(cls, dtype: np.dtype | str, bands: int) -> BandSums:
        dtype = np.dtype(dtype)
        binning = _binning(dtype)
        return cls(dtype.name, [0] * bands, [0.0] * bands, [0.0] * bands,
                   None if binning is None else
                   np.zeros((bands, 1 << min(HISTOGRAM_BITS, np.iinfo(dtype).bits)), np.int64))

    @classmethod
    def of_chip(cls, chip: np.ndarray, valid: np.ndarray | None) -> BandSums:
        """The sums of one (bands, rows, cols) chip's pixels where `valid` (rows, cols) holds."""
        sums = cls.empty(chip.dtype, len(chip))
        binning = _binning(chip.dtype)
        for band, pixels in enumerate(chip):
            values = pixels[valid] if valid is not None else pixels.reshape(-1)
            if chip.dtype.kind == "f":
                values = values[np.isfinite(values)]
            wide = values.astype(np.float64)
            sums.count[band] = int(values.size)
            sums.total[band] = float(wide.sum())
            sums.squares[band] = float(np.square(wide).sum())
            if binning is not None:
                offset, shift = binning
                bins = (values.astype(np.int64) + offset) >> shift
                sums.histogram[band] = np.bincount(bins, minlength=sums.histogram.shape[1])
        return sums

    def add(self, other: BandSums) -> None:
        if (other.dtype, len(other.count)) != (self.dtype, len(self.count)):
            raise ValueError(f"band sums of {other.dtype} x {len(other.count)} cannot join "
                             f"{self.dtype} x {len(self.count)}")
        for band in range(len(self.count)):
            self.count[band] += other.count[band]
            self.total[band] += other.total[band]
            self.squares[band] += other.squares[band]
        if self.histogram is not None:
            self.histogram += other.histogram

    def to_record(self) -> dict:
        return {"dtype": self.dtype, "count": self.count, "sum": self.total,
                "sum_squares": self.squares,
                "histogram": None if self.histogram is None else self.histogram.tolist()}

    @classmethod
    def from_record(cls, record: dict) -> BandSums:
        histogram = record["histogram"]
        return cls(record["dtype"], record["count"], record["sum"], record["sum_squares"],
                   None if histogram is None else np.array(histogram, np.int64))

    def summary(self, percentiles: tuple[float, ...]) -> dict:
        """mean, std and `percentiles` per band (percentiles of integer types to the width of
        a histogram bin: exact for 8-bit, 16 levels for 16-bit; null for float types)."""
        count = np.maximum(np.array(self.count, np.float64), 1)
        mean = np.array(self.total) / count
        std = np.sqrt(np.maximum(np.array(self.squares) / count - mean ** 2, 0))
        summary = {"dtype": self.dtype, "pixels": self.count, "mean": _rounded(mean),
                   "std": _rounded(std), "percentiles": None}
        binning = _binning(np.dtype(self.dtype))
        if binning is not None:
            offset, shift = binning
            summary["percentiles"] = {
                _key(p): [_histogram_percentile(h, p, offset, shift) for h in self.histogram]
                for p in percentiles}
        return summary


def _key(percentile: float) -> str:
    return f"{percentile:g}"


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def _histogram_percentile(histogram: np.ndarray, percentile: float, offset: int,
                          shift: int) -> float:
    """The value below which `percentile` % of the counted values lie: the middle of its bin."""
    cumulative = np.cumsum(histogram)
    if cumulative[-1] == 0:
        return 0.0
    rank = percentile / 100 * cumulative[-1]
    index = int(np.searchsorted(cumulative, max(rank, 1), side="left"))
    return float((index << shift) - offset + ((1 << shift) - 1) / 2)


@dataclass(frozen=True)
class InputScaling:
    """How a chip's values become a model's input: (value - low) / (high - low) per band."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def of_stats(cls, stats: dict, bands: int, stretch_percentiles: tuple[float, float]
                 ) -> InputScaling:
        """8-bit chips: 0 and 255 (value / 255). Others: the train chips' percentiles
        (`stretch_percentiles`), or for float chips mean -/+ 2 std."""
        if stats is None or stats["dtype"] == "uint8":
            return cls((0.0,) * bands, (255.0,) * bands)
        if stats["percentiles"] is not None:
            low, high = (stats["percentiles"][_key(p)] for p in stretch_percentiles)
        else:
            low = [m - 2 * s for m, s in zip(stats["mean"], stats["std"], strict=True)]
            high = [m + 2 * s for m, s in zip(stats["mean"], stats["std"], strict=True)]
        high = [h if h > lo else lo + 1 for lo, h in zip(low, high, strict=True)]
        return cls(tuple(float(v) for v in low), tuple(float(v) for v in high))

    def to_record(self) -> dict:
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_record(cls, record: dict | None, bands: int) -> InputScaling:
        """model.pt's scaling; a model saved before nadir recorded one took 8-bit chips."""
        if record is None:
            return cls((0.0,) * bands, (255.0,) * bands)
        return cls(tuple(record["low"]), tuple(record["high"]))

    def apply(self, pixels):
        """(bands, h, w) or (n, bands, h, w) values (a float tensor or array) scaled per band;
        one-band (grey) chips that reach the model as three bands use their one scaling."""
        import torch

        low = torch.tensor(self.low, dtype=pixels.dtype, device=pixels.device)
        high = torch.tensor(self.high, dtype=pixels.dtype, device=pixels.device)
        if len(self.low) != pixels.shape[-3]:
            low, high = low[:1].expand(pixels.shape[-3]), high[:1].expand(pixels.shape[-3])
        shape = (-1, 1, 1)
        if (low == 0).all() and (high == 255).all():
            return pixels / 255.0  # exactly what 8-bit chips always got
        return (pixels - low.reshape(shape)) / (high - low).reshape(shape)
