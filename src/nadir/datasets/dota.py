"""DOTA's label format: one `labelTxt/<image>.txt` per image.

Optional header lines `imagesource:<name>` and `gsd:<value>`, then one object per line:
`x1 y1 x2 y2 x3 y3 x4 y4 <class> [<difficult>]` in pixel coordinates. The embedded sample
dataset is written in this format, so the same parser serves the sample and real DOTA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from nadir.core.errors import InputError
from nadir.datasets.records import CASES, BadInput, read_label_text

CLASSES_V1_0 = [
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle",
    "large-vehicle", "ship", "tennis-court", "basketball-court", "storage-tank",
    "soccer-ball-field", "roundabout", "harbor", "swimming-pool", "helicopter",
]
CLASSES_V1_5 = [*CLASSES_V1_0, "container-crane"]
CLASSES_V2_0 = [*CLASSES_V1_5, "airport", "helipad"]
CLASSES_BY_VERSION = {"v1.0": CLASSES_V1_0, "v1.5": CLASSES_V1_5, "v2.0": CLASSES_V2_0}

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


def _parse_object(fields: list[str], known: set[str]) -> tuple[str, str] | LabelObject:
    """One object line as a `LabelObject`, or (bad-input case, message) when it is bad."""
    numbers = []
    for token in fields:
        try:
            numbers.append(float(token))
        except ValueError:
            break
    rest = fields[len(numbers):]
    if len(numbers) < 8 and len(fields) >= 9 and fields[len(numbers)] not in known:
        return "malformed_record", (f"coordinate {len(numbers) + 1} is not a number: "
                                    f"{fields[len(numbers)]!r}; expected {FORMAT_HINT}")
    if len(numbers) == 9 and not rest:
        return "malformed_record", f"the class name is missing; expected {FORMAT_HINT}"
    if len(numbers) != 8 or len(rest) not in (1, 2):
        return "malformed_record", (f"expected {FORMAT_HINT}; got {len(numbers)} numbers and "
                                    f"{len(rest)} other field(s)")
    if not all(math.isfinite(v) for v in numbers):
        return "malformed_record", "coordinates must be finite numbers"
    category = rest[0]
    if category not in known:
        return "unknown_class", f"unknown class {category!r}; expected one of {sorted(known)}"
    difficult = 0  # DOTA files that omit the flag mean "not difficult"
    if len(rest) == 2:
        if rest[1] not in ("0", "1"):
            return "malformed_record", f"difficult must be 0 or 1, got {rest[1]!r}"
        difficult = int(rest[1])
    return LabelObject(numbers, category, difficult, 0)


def parse_label_text(text: str, path: str, classes: list[str],
                     bad: BadInput | None = None) -> LabelFile:
    """Parse the text of one DOTA label file.

    Bad lines go to `bad` (error or counted skip per case); without it every bad line raises
    `InputError` naming the file and line.
    """
    bad = bad or BadInput({case: "error" for case in CASES}, from_config=False)
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
        parsed = _parse_object(line.split(), known)
        if isinstance(parsed, tuple):
            case, message = parsed
            bad.report(case, path, f"{message}: {line!r}", line_no)
            continue
        parsed.line = line_no
        result.objects.append(parsed)
    return result


def parse_label_file(path: str | Path, classes: list[str],
                     bad: BadInput | None = None) -> LabelFile:
    return parse_label_text(read_label_text(path), str(path), classes, bad)


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
