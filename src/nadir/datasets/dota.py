"""DOTA's label format: one `labelTxt/<image>.txt` per image.

Optional header lines `imagesource:<name>` and `gsd:<value>`, then one object per line:
`x1 y1 x2 y2 x3 y3 x4 y4 <class> [<difficult>]` in pixel coordinates. The embedded sample
dataset is written in this format, so the same parser serves the sample and real DOTA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from nadir.errors import InputError

CLASSES_V1_0 = [
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle",
    "large-vehicle", "ship", "tennis-court", "basketball-court", "storage-tank",
    "soccer-ball-field", "roundabout", "harbor", "swimming-pool", "helicopter",
]
CLASSES_V1_5 = [*CLASSES_V1_0, "container-crane"]
CLASSES_V2_0 = [*CLASSES_V1_5, "airport", "helipad"]

FORMAT_HINT = "x1 y1 x2 y2 x3 y3 x4 y4 <class> [<difficult 0|1>]"


@dataclass
class LabelObject:
    polygon: list[float]  # x1 y1 ... x4 y4 in pixels
    category: str
    difficult: int
    line: int


@dataclass
class LabelFile:
    path: str
    imagesource: str | None = None
    gsd: float | None = None
    objects: list[LabelObject] = field(default_factory=list)


def _parse_header(key: str, value: str, path: str, line_no: int) -> str | float | None:
    value = value.strip()
    if key == "gsd":
        if value.lower() in ("", "null", "none"):
            return None
        try:
            return float(value)
        except ValueError:
            message = f"gsd must be a number or null, got {value!r}"
            raise InputError(path, message, line_no) from None
    return value


def parse_label_text(text: str, path: str, classes: list[str]) -> LabelFile:
    """Parse the text of one DOTA label file; any bad line raises `InputError` with its line."""
    known = set(classes)
    result = LabelFile(path=path)
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        head, sep, value = line.partition(":")
        if sep and head in ("imagesource", "gsd"):
            setattr(result, head, _parse_header(head, value, path, line_no))
            continue
        fields = line.split()
        numbers = []
        for token in fields:
            try:
                numbers.append(float(token))
            except ValueError:
                break
        rest = fields[len(numbers):]
        if len(numbers) < 8 and len(fields) >= 9 and fields[len(numbers)] not in known:
            raise InputError(path, f"coordinate {len(numbers) + 1} is not a number: "
                             f"{fields[len(numbers)]!r}; expected {FORMAT_HINT}", line_no)
        if len(numbers) == 9 and not rest:
            raise InputError(path, f"the class name is missing; expected {FORMAT_HINT}", line_no)
        if len(numbers) != 8 or len(rest) not in (1, 2):
            raise InputError(
                path,
                f"expected {FORMAT_HINT}; got {len(numbers)} numbers and "
                f"{len(rest)} other field(s): {line!r}",
                line_no,
            )
        if not all(math.isfinite(v) for v in numbers):
            raise InputError(path, f"coordinates must be finite numbers: {line!r}", line_no)
        category = rest[0]
        if category not in known:
            raise InputError(
                path, f"unknown class {category!r}; expected one of {sorted(known)}", line_no
            )
        difficult = 0
        if len(rest) == 2:
            if rest[1] not in ("0", "1"):
                raise InputError(path, f"difficult must be 0 or 1, got {rest[1]!r}", line_no)
            difficult = int(rest[1])
        result.objects.append(LabelObject(numbers, category, difficult, line_no))
    return result


def parse_label_file(path: str | Path, classes: list[str]) -> LabelFile:
    return parse_label_text(Path(path).read_text(encoding="utf-8"), str(path), classes)


def format_label_file(label: LabelFile) -> str:
    """Write a label file in DOTA's format (used by the sample generator and tests)."""
    lines = []
    if label.imagesource is not None:
        lines.append(f"imagesource:{label.imagesource}")
    lines.append(f"gsd:{'null' if label.gsd is None else label.gsd}")
    for obj in label.objects:
        coords = " ".join(f"{v:.1f}" for v in obj.polygon)
        lines.append(f"{coords} {obj.category} {obj.difficult}")
    return "\n".join(lines) + "\n"
