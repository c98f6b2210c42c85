"""xView: one GeoJSON FeatureCollection holding every training label (about a million features).

Per feature, `properties.bounds_imcoords` is "xmin,ymin,xmax,ymax" in pixels (sometimes empty),
`properties.type_id` an integer class id and `properties.image_id` the image's file name. The
file is read in one streaming pass from a fixed-size text buffer, so memory stays bounded however
large the file is. The features in the buffer are decoded by msgspec's C decoder in one call,
building only their properties (the geometry is checked, never built); any stretch it refuses is
decoded again feature by feature by the standard library, whose verdict and messages count.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from nadir.core.errors import InputError
from nadir.core.geometry import box_outside
from nadir.datasets.records import BadInput

# The 60 named classes of xView's training labels (ids are not contiguous).
CLASS_NAMES = {
    11: "Fixed-wing Aircraft", 12: "Small Aircraft", 13: "Cargo Plane", 15: "Helicopter",
    17: "Passenger Vehicle", 18: "Small Car", 19: "Bus", 20: "Pickup Truck",
    21: "Utility Truck", 23: "Truck", 24: "Cargo Truck", 25: "Truck w/Box",
    26: "Truck Tractor", 27: "Trailer", 28: "Truck w/Flatbed", 29: "Truck w/Liquid",
    32: "Crane Truck", 33: "Railway Vehicle", 34: "Passenger Car", 35: "Cargo Car",
    36: "Flat Car", 37: "Tank car", 38: "Locomotive", 40: "Maritime Vessel", 41: "Motorboat",
    42: "Sailboat", 44: "Tugboat", 45: "Barge", 47: "Fishing Vessel", 49: "Ferry", 50: "Yacht",
    51: "Container Ship", 52: "Oil Tanker", 53: "Engineering Vehicle", 54: "Tower crane",
    55: "Container Crane", 56: "Reach Stacker", 57: "Straddle Carrier", 59: "Mobile Crane",
    60: "Dump Truck", 61: "Haul Truck", 62: "Scraper/Tractor", 63: "Front loader/Bulldozer",
    64: "Excavator", 65: "Cement Mixer", 66: "Ground Grader", 71: "Hut/Tent", 72: "Shed",
    73: "Building", 74: "Aircraft Hangar", 76: "Damaged Building", 77: "Facility",
    79: "Construction Site", 83: "Vehicle Lot", 84: "Helipad", 86: "Storage Tank",
    89: "Shipping container lot", 91: "Shipping Container", 93: "Pylon", 94: "Tower",
}
CLASSES = list(CLASS_NAMES.values())
UNNAMED_IDS = (75, 82)  # present in the labels, but with no class name: dropped and counted

CHUNK_CHARS = 1 << 20
MAX_FEATURE_CHARS = 64 << 20  # a single feature larger than this is treated as malformed
_FEATURES_KEY = re.compile(r'"features"\s*:\s*\[')
# Up to the last "}" followed by ", {": where a feature most likely ends and the next begins (a
# "}" inside a string or a nested object can look the same: decoding the stretch tells).
_UP_TO_LAST_FEATURE_END = re.compile(r"(?s:.*)\}(?=[ \t\r\n]*,[ \t\r\n]*\{)")


class _FeatureProperties(msgspec.Struct):
    """A feature as the index reads it: its other members are checked to be JSON, not built."""

    properties: object = None


_STRETCH_DECODERS = {False: msgspec.json.Decoder(list),
                     True: msgspec.json.Decoder(list[_FeatureProperties])}


@dataclass
class XviewObject:
    image: str
    feature: int  # 1-based position in the file, for messages
    category: str
    polygon: list[float]


@dataclass
class XviewCounts:
    features: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # drops outside the bad-input policy
    images: set = field(default_factory=set)  # fetched images named by at least one feature


def iter_features(path: Path, properties_only: bool = False) -> Iterator:
    """Yield the features of a FeatureCollection one by one, holding about one chunk in memory.

    With `properties_only`, yield each feature's `properties` instead (None when it has none or
    is not an object): building the geometry would take most of the time. The file is UTF-8,
    with or without a byte-order mark; other encodings are an error."""
    try:
        yield from _features(path, properties_only)
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason}); save the file as "
                               "UTF-8") from None


def _features(path: Path, properties_only: bool) -> Iterator:
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig") as fh:
        buffer = fh.read(CHUNK_CHARS)
        match = _FEATURES_KEY.search(buffer)
        while match is None:
            more = fh.read(CHUNK_CHARS)
            if not more:
                raise InputError(path, 'no "features" array found; expected a GeoJSON '
                                       'FeatureCollection')
            buffer = buffer[-64:] + more
            match = _FEATURES_KEY.search(buffer)
        pos, eof, number = match.end(), False, 0
        one_by_one_until = 0  # the buffer up to here is decoded feature by feature
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buffer) and buffer[pos] == "]":
                return
            if pos >= one_by_one_until:
                stretch, end = _decode_stretch(buffer, pos, properties_only)
                if stretch is not None:
                    number += len(stretch)
                    yield from stretch
                    buffer, pos, one_by_one_until = buffer[end:], 0, 0  # a feature's start
                    continue
                one_by_one_until = end
            try:
                if pos >= len(buffer):
                    raise json.JSONDecodeError("buffer exhausted", buffer, pos)
                feature, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                if eof or len(buffer) - pos > MAX_FEATURE_CHARS:
                    raise InputError(path, f"feature {number + 1} is not valid JSON "
                                           f"({exc.msg})") from None
                more = fh.read(CHUNK_CHARS)
                eof = not more
                buffer, one_by_one_until, pos = buffer[pos:] + more, one_by_one_until - pos, 0
                continue
            number += 1
            if properties_only:
                feature = feature.get("properties") if isinstance(feature, dict) else None
            yield feature
            pos = end


def _decode_stretch(buffer: str, pos: int, properties_only: bool) -> tuple[list | None, int]:
    """The features from `pos` up to the last likely feature end in the buffer, decoded in one
    call, and where they end. (None, end) when that stretch is anything but features separated
    by commas that msgspec takes (a likely end that is none, NaN, stray commas, deep nesting):
    the standard library then decodes it feature by feature. (None, len(buffer)) when the
    buffer holds no likely feature end."""
    match = _UP_TO_LAST_FEATURE_END.match(buffer, pos)
    if match is None:
        return None, len(buffer)
    end = match.end()
    try:
        stretch = _STRETCH_DECODERS[properties_only].decode("[" + buffer[pos:end] + "]")
    except (msgspec.DecodeError, RecursionError):
        return None, end
    return [f.properties for f in stretch] if properties_only else stretch, end


def _box(bounds, number: int) -> tuple[str, str] | list[float]:
    """[xmin, ymin, xmax, ymax] from `bounds_imcoords`, or (reason, message) when unusable.

    A feature without a box says so in any of three ways, all dropped as `empty_box`: no
    `bounds_imcoords`, an empty string, or an empty list (what DIUx's own loader tests for)."""
    if bounds is None or bounds == [] or (isinstance(bounds, str) and not bounds.strip()):
        return "empty_box", f"feature {number}: empty bounds_imcoords"
    parts = bounds if isinstance(bounds, list) else str(bounds).split(",")
    try:
        values = [float(v) for v in parts]
    except (TypeError, ValueError):
        return "malformed_record", f"feature {number}: bounds_imcoords {bounds!r} is not numeric"
    if len(values) != 4:
        return "malformed_record", (f"feature {number}: bounds_imcoords {bounds!r} has "
                                    f"{len(values)} values, expected xmin,ymin,xmax,ymax")
    if values[2] <= values[0] or values[3] <= values[1]:
        return "degenerate_box", f"feature {number}: box {bounds!r} has no area"
    return values


def read_objects(path: Path, image_sizes: dict[str, tuple[int, int]], bad: BadInput,
                 counts: XviewCounts) -> Iterator[XviewObject]:
    """The usable objects of the label file, in file order; every drop is counted in `counts`.

    `image_sizes` maps image file names (e.g. "2355.tif") to (width, height). Features of
    absent images, unnamed ids (75, 82) and empty or zero-area boxes are counted and dropped;
    malformed features, unknown class ids and boxes outside their image follow `bad`.
    """
    for number, props in enumerate(iter_features(path, properties_only=True), start=1):
        counts.features += 1
        if not isinstance(props, dict) or "image_id" not in props or "type_id" not in props:
            bad.report("malformed_record", str(path),
                       f"feature {number}: properties image_id and type_id are required")
            continue
        image = str(props["image_id"])
        size = image_sizes.get(image)
        if size is None:
            bad.report("label_without_image", str(path),
                       f"feature {number}: image {image!r} is not among the fetched images")
            continue
        counts.images.add(image)
        try:
            type_id = int(props["type_id"])
        except (TypeError, ValueError):
            bad.report("malformed_record", str(path),
                       f"feature {number}: type_id {props['type_id']!r} is not an integer")
            continue
        if type_id in UNNAMED_IDS:
            counts.dropped[f"unnamed_type_id_{type_id}"] += 1
            continue
        if type_id not in CLASS_NAMES:
            bad.report("unknown_class", str(path), f"feature {number}: unknown type_id {type_id}")
            continue
        box = _box(props.get("bounds_imcoords"), number)
        if isinstance(box, tuple):
            reason, message = box
            if reason == "malformed_record":
                bad.report(reason, str(path), message)
            else:
                counts.dropped[reason] += 1
            continue
        xmin, ymin, xmax, ymax = box
        width, height = size
        if box_outside(xmin, ymin, xmax, ymax, width, height):
            bad.report("outside_image", str(path),
                       f"feature {number}: box {box} lies outside the {width}x{height} image "
                       f"{image}")
            continue
        counts.kept += 1
        yield XviewObject(image, number, CLASS_NAMES[type_id],
                          [xmin, ymin, xmax, ymin, xmax, ymax, xmin, ymax])
