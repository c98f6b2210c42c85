"""How chips are cut: the one record of chip size, overlap, bands, stretch and encoding.

The chip stage cuts with it and writes it into every chip list and the chip manifest
(`to_record`); training reads it from the chip manifest and saves it in model.pt; inference
reads it from there (`from_record`) and cuts its windows with it. So a model is applied to
windows of exactly the size, bands and radiometry it learnt from, and the value has one name
(`size`) on its whole way from `chipping.size` in the config to the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from nadir.core.errors import InputError, NadirError
from nadir.core.schema import default_field

# Settings under `chipping:` that concern the workflow, not how one chip is cut.
WORKFLOW_KEYS = {"shards"}


def _tuple_or_none(value):
    return None if value is None else tuple(value)


@dataclass(frozen=True)
class ChipParams:
    """The `chipping:` settings that decide the chips (defaults: the config schema's)."""

    size: int = default_field("chipping", "size")
    overlap: int = default_field("chipping", "overlap")
    min_visible: float = default_field("chipping", "min_visible")
    empty_keep: float = default_field("chipping", "empty_keep")
    nodata_max: float = default_field("chipping", "nodata_max")
    pad_value: int = default_field("chipping", "pad_value")
    bands: tuple[int | str, ...] | None = default_field("chipping", "bands",
                                                        kind=_tuple_or_none)
    stretch_percentiles: tuple[float, float] = default_field("chipping", "stretch_percentiles",
                                                             kind=tuple)
    stretch: bool = default_field("chipping", "stretch")
    rgb_bands: tuple[int | str, ...] | None = default_field("chipping", "rgb_bands",
                                                             kind=_tuple_or_none)
    image_format: str = default_field("chipping", "image_format")
    jpeg_quality: int = default_field("chipping", "jpeg_quality")
    geotiff: bool = default_field("chipping", "geotiff")
    seed: int = default_field("chipping", "seed")

    def __post_init__(self):
        problems = []
        if not 0 <= self.overlap < self.size:
            problems.append(f"overlap must be in [0, size); got {self.overlap} with size "
                            f"{self.size}")
        if self.bands is not None and len(self.bands) not in (1, 3) \
                and self.image_format != "tiff":
            problems.append(f"{len(self.bands)} bands ({list(self.bands)}) need image_format: "
                            "tiff (JPEG and PNG hold 1 or 3 bands)")
        if self.bands is not None and len(set(self.bands)) != len(self.bands):
            problems.append(f"bands lists a band twice: {list(self.bands)}")
        if not self.stretch and self.image_format != "tiff":
            problems.append("stretch: false keeps the scene's values at full bit depth, which "
                            "needs image_format: tiff")
        if self.rgb_bands is not None:
            chosen = self.bands or (1, 2, 3)
            if len(self.rgb_bands) != 3 or not set(self.rgb_bands) <= set(chosen):
                problems.append(f"rgb_bands must name 3 of the chipped bands {list(chosen)}; "
                                f"got {list(self.rgb_bands)}")
        if self.geotiff and self.image_format == "tiff":
            problems.append("geotiff: true is for JPEG and PNG chips; TIFF chips are "
                            "GeoTIFFs already")
        low, high = self.stretch_percentiles
        if not 0 <= low < high <= 100:
            problems.append("stretch_percentiles must be [low, high] with 0 <= low < high <= "
                            f"100; got {list(self.stretch_percentiles)}")
        if self.image_format not in ("jpeg", "png", "tiff"):
            problems.append(f"image_format must be jpeg, png or tiff; got {self.image_format!r}")
        if problems:
            raise NadirError("invalid chipping settings: " + "; ".join(problems))

    @classmethod
    def from_config(cls, settings: dict) -> ChipParams:
        """Build from the `chipping:` config section (JSON lists become tuples)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known - WORKFLOW_KEYS)
        if unknown:
            raise NadirError(f"unknown chipping setting(s) {unknown}; known: {sorted(known)}")
        values = {k: v for k, v in settings.items() if k in known}
        for key in ("bands", "rgb_bands", "stretch_percentiles"):
            if key in values:
                values[key] = _tuple_or_none(values[key])
        return cls(**values)

    @classmethod
    def from_record(cls, record: dict | None, where: str | Path) -> ChipParams:
        """The parameters a chip list, chip manifest or model recorded (`to_record`), read
        back; an InputError naming `where` when there are none or they are not valid."""
        if record is None:
            raise InputError(where, "records no chipping parameters: it was made before nadir "
                                    "recorded them; rerun the job that wrote it")
        try:
            return cls.from_config(record)
        except (NadirError, TypeError, ValueError) as exc:
            raise InputError(where, f"unreadable chipping parameters ({exc})") from None

    def to_record(self) -> dict:
        """Every parameter as JSON values, in the form chip lists, manifests and models keep."""
        record = asdict(self)
        record["bands"] = list(self.bands) if self.bands else None
        record["rgb_bands"] = list(self.rgb_bands) if self.rgb_bands else None
        record["stretch_percentiles"] = list(self.stretch_percentiles)
        return record

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg", "png": "png", "tiff": "tif"}[self.image_format]

    @property
    def model_bands(self) -> int:
        """Bands a model trained on these chips takes: grey chips reach it as RGB."""
        return 3 if self.bands is None or len(self.bands) == 1 else len(self.bands)

    @property
    def rgb_positions(self) -> tuple[int, int, int] | None:
        """0-based places of red, green and blue among the model's bands (`rgb_bands`, else
        the first three), where first-convolution adaptation keeps the pretrained RGB filters
        and the report draws its composite; None for fewer than 3 bands (grey)."""
        if self.bands is None or len(self.bands) == 1:
            return (0, 1, 2)
        if len(self.bands) < 3:
            return None
        rgb = self.rgb_bands or self.bands[:3]
        return tuple(self.bands.index(b) for b in rgb)

    @classmethod
    def of_manifest(cls, path: str | Path) -> ChipParams:
        """The parameters a chip manifest (or a shard's chip list) records."""
        import json

        try:
            record = json.loads(Path(path).read_text()).get("params")
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(path, f"not a readable chip manifest ({exc}); rerun the "
                                   "chip_manifest job") from None
        return cls.from_record(record, path)
