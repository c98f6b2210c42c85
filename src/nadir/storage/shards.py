"""The one reader of chip shards: members of the tar files by byte offset, never unpacked.

Training, prediction, the figures and the detectron2 adapter all find their chips through
`member_offsets` and read them with `read_member`, so a missing chip is reported the same way
everywhere. Chip lists (`shard-NNN.json`) are read back through `read_chip_list`, which holds
their names to the name rule (`nadir.core.names`).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from nadir.core.errors import InputError
from nadir.core.names import check_name

Member = tuple[int, str]
# What chipping writes, and so all a chip is decoded as: Pillow, left to guess, opens dozens of
# formats, EPS among them through an external program (Ghostscript).
CHIP_FORMATS = ("JPEG", "PNG")  # (shard index, member name), as COCO images list their chips


def member_offsets(shards: list[Path], wanted: set[Member],
                   listed_in: Path) -> dict[Member, tuple[int, int]]:
    """(data offset, size) of every wanted chip; `listed_in` is the file that lists them.

    A chip that its shard lacks, or a shard index beyond `shards`, is an InputError that names
    the shard (or the list) and the first such chip.
    """
    out_of_range = sorted(index for index, _ in wanted if not 0 <= index < len(shards))
    if out_of_range:
        raise InputError(listed_in, f"chips are listed in shard {out_of_range[0]}, but "
                         f"{len(shards)} shard(s) were given")
    offsets = {}
    for index in sorted({index for index, _ in wanted}):
        with tarfile.open(shards[index]) as tar:
            for member in tar:
                if (index, member.name) in wanted:
                    offsets[(index, member.name)] = (member.offset_data, member.size)
    missing = sorted(wanted - offsets.keys())
    if missing:
        index, name = missing[0]
        raise InputError(shards[index], f"chip {name} is not in this shard ({len(missing)} "
                         f"chip(s) listed in {listed_in} are missing); rerun the chip stage")
    return offsets


def read_member(shard: Path, offset: int, size: int) -> bytes:
    """The bytes of one chip at a known offset (from `member_offsets`)."""
    with open(shard, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")


def decode_chip(source: bytes | Path, where: str | Path):
    """A chip's pixels as a (height, width, bands) array: JPEG and PNG chips as RGB uint8 (grey
    repeated), TIFF chips (any band count and type) as stored, one band repeated to three.
    Decoded only as these formats; anything else (a tampered shard) is an InputError naming
    `where`."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if data[:4] in TIFF_SIGNATURES:
        return _decode_tiff(data, where)
    try:
        with Image.open(io.BytesIO(data), formats=CHIP_FORMATS) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(where, f"not a JPEG, PNG or TIFF chip ({exc}); rerun the chip "
                                "stage") from None


def _decode_tiff(data: bytes, where: str | Path):
    """A TIFF chip's bands by GDAL's GTiff driver alone (no other driver is tried)."""
    import warnings

    import numpy as np
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings(), MemoryFile(data) as memfile, \
                memfile.open(driver="GTiff") as src:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            pixels = src.read()
    except RasterioError as exc:
        raise InputError(where, f"not a readable TIFF chip ({exc}); rerun the chip stage") \
            from None
    if len(pixels) == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def read_chip_list(path: Path) -> dict:
    """A shard's chip list read back (a later job, maybe from shared storage): every scene and
    chip file name must follow the name rule, since chip names become files and tar members."""
    try:
        shard = json.loads(Path(path).read_text())
        for chip in shard["chips"]:
            check_name(chip["scene"], path, "scene name")
            check_name(chip["file"], path, "chip file name")
            if chip.get("geotiff") is not None:
                check_name(chip["geotiff"], path, "chip GeoTIFF name")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a readable chip list ({exc!r}); rerun the chip job") \
            from None
    return shard
