"""Hostile inputs, made by the tests (tests/test_security.py, the fault matrix): an archive whose
file names run commands, rasters that point GDAL at other files or URLs, declare absurd sizes or
hold a corrupt tile, weights files that carry a pickle payload; and the stages' reading of one
raster, to feed them to."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
from dataset_builders import FileServer, make_dota

from nadir.chip.shard import chip_shard
from nadir.raster.chip_params import ChipParams


def hostile_dota(root: Path) -> dict[str, Path]:
    """make_dota's layout, with one train image and its label named to run `touch PWNED`."""
    sources = make_dota(root, train=2, val=1, size=96)
    hostile = root / "hostile.zip"
    with zipfile.ZipFile(sources["train"]) as zin, zipfile.ZipFile(hostile, "w") as zout:
        for member in zin.namelist():
            zout.writestr(member.replace("P0001", "P0001$(touch PWNED)"), zin.read(member))
    return {"train": hostile, "val": sources["val"]}


def listener(folder: Path) -> FileServer:
    """An HTTP server on 127.0.0.1 that serves nothing and records every request: where the
    hostile rasters point GDAL (a cloud metadata address, from a pod)."""
    folder.mkdir(parents=True, exist_ok=True)
    return FileServer(folder)


def pointing_vrt(source: str, width: int = 64, height: int = 64, bands: int = 1,
                 dtype: str = "Byte") -> str:
    """A VRT whose bands read raw bytes of `source` (a local path or a /vsicurl/ URL)."""
    size = {"Byte": 1, "UInt16": 2}[dtype]
    band = ('<VRTRasterBand dataType="{dtype}" band="{n}" subClass="VRTRawRasterBand">'
            '<SourceFilename relativetoVRT="0">{source}</SourceFilename><ImageOffset>0'
            '</ImageOffset><PixelOffset>{size}</PixelOffset><LineOffset>{line}</LineOffset>'
            '</VRTRasterBand>')
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
            + "".join(band.format(dtype=dtype, n=n, source=source, size=size,
                                  line=size * width) for n in range(1, bands + 1))
            + "</VRTDataset>")


def sparse_geotiff(path: Path, side: int = 10**7) -> Path:
    """A GeoTIFF declaring side x side px x 3 bands that stores no pixel: a few hundred bytes."""
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3,
                       dtype="uint8", blockysize=10**6, sparse_ok=True, bigtiff="YES"):
        pass
    return path


def corrupt_tile(path: Path) -> Path:
    """A 256 px tiled, deflated GeoTIFF whose tile in block column 2, row 1 (x 128-192, y
    64-128) is garbage."""
    import rasterio

    pixels = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=3,
                       dtype="uint8", tiled=True, blockxsize=64, blockysize=64,
                       compress="deflate") as dst:
        dst.write(pixels.transpose(2, 0, 1))
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_2_1", "TIFF", bidx=1))
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(range(256)) * (size // 256) + b"\xff" * (size % 256))
    return path


class Payload:
    """What a hostile weights file carries: unpickling it runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def torch_payload(path: Path, marker: Path) -> Path:
    """A torch file of one tensor and a Payload."""
    import torch

    torch.save({"conv1.weight": torch.zeros(1), "payload": Payload(marker)}, path)
    return path


def chip_scene(folder: Path, image: Path, **limits) -> dict:
    """Chip one scene `s` of `image` into folder/s.tar (64 px chips, every window kept)."""
    params = ChipParams(size=64, overlap=0, empty_keep=1.0, image_format="png")
    return chip_shard([{"scene": "s", "split": "train"}], {}, {"s": image}, params,
                      folder / "s.tar", folder / "s.json", **limits)


def read_scene(location: str | Path, **limits):
    """Inference's reading of a scene `scene` (64 px windows), with a detector that finds
    nothing."""
    from nadir.predict import InferenceSettings, SceneSource
    from nadir.predict.detect import detect_scene

    return detect_scene(SceneSource("scene", str(location)), ChipParams(size=64, overlap=0),
                        lambda chips: [[] for _ in chips], InferenceSettings(), **limits)
