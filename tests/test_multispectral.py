"""N-band chips at full bit depth, their per-band statistics, and models that take N bands."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from nadir.chip import write_chip_manifest
from nadir.chip.shard import chip_shard
from nadir.config import ConfigError, validate
from nadir.core.errors import InputError
from nadir.raster.band_stats import InputScaling
from nadir.raster.chip_params import ChipParams
from nadir.storage.shards import decode_chip

SENTINEL2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


def write_product(path: Path, pixels: np.ndarray, descriptions: list[str] | None = None,
                  nodata: float | None = None) -> Path:
    """A tiled GeoTIFF as multispectral products come: named bands, a nodata value, any type."""
    bands, height, width = pixels.shape
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(
            path, "w", driver="GTiff", width=width, height=height, count=bands,
            dtype=pixels.dtype.name, crs="EPSG:32633", nodata=nodata, tiled=True,
            blockxsize=64, blockysize=64, compress="deflate",
            transform=from_origin(500_000.0, 5_000_000.0, 10.0, 10.0)) as dst:
        dst.write(pixels)
        for index, description in enumerate(descriptions or [], start=1):
            dst.set_band_description(index, description)
    return path


def reflectance(bands: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """16-bit values over the whole range (0..65535), different in every band."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 65536, size=(bands, height, width), dtype=np.uint16)


def chip_scenes(tmp_path: Path, images: dict[str, Path], splits: dict[str, str] | None = None,
                **settings) -> tuple[dict, Path, dict]:
    params = ChipParams(**{"empty_keep": 1.0, "image_format": "tiff", **settings})
    tar, listing = tmp_path / "shard.tar", tmp_path / "shard.json"
    scenes = [{"scene": name, "split": (splits or {}).get(name, "train")} for name in images]
    chip_shard(scenes, {}, images, params, tar, listing)
    manifest = write_chip_manifest([listing], tmp_path / "manifest.json")
    return json.loads(listing.read_text()), tar, manifest


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


# --- chips ----------------------------------------------------------------------------------

def test_16bit_bands_chosen_by_description_come_out_with_exactly_their_values(tmp_path):
    pixels = reflectance(13, 100, 90)
    pixels[:, :5, :7] = 0  # the product's nodata corner
    image = write_product(tmp_path / "s2.tif", pixels, SENTINEL2, nodata=0)
    result, tar, _ = chip_scenes(tmp_path, {"S": image}, size=64, overlap=16,
                                 bands=("B4", "B3", "B2", "B8", "B11"), stretch=False,
                                 pad_value=7)
    chips = members(tar)
    assert len(result["chips"]) == 4
    wanted = [SENTINEL2.index(b) for b in ("B4", "B3", "B2", "B8", "B11")]
    for record in result["chips"]:
        out = decode_chip(chips[record["file"]], record["file"]).transpose(2, 0, 1)
        assert out.dtype == np.uint16 and out.shape == (5, 64, 64)
        x, y = record["x"], record["y"]
        window = pixels[wanted, y:y + 64, x:x + 64]
        valid = (pixels[:, y:y + 64, x:x + 64] != 0).all(axis=0)
        np.testing.assert_array_equal(out[:, valid], window[:, valid])
        assert (out[:, ~valid] == 7).all()
    assert result["params"]["bands"] == ["B4", "B3", "B2", "B8", "B11"]


def test_a_scene_without_a_named_band_is_an_error_naming_the_bands(tmp_path):
    image = write_product(tmp_path / "wv.tif", reflectance(5, 64, 64), ["C", "B", "G", "Y", "R"])
    with pytest.raises(InputError, match=r"wv\.tif: lacks band\(s\) \['NIR1'\] .* 5 band\(s\): "
                                         r"1 \(C\), 2 \(B\)"):
        chip_scenes(tmp_path, {"S": image}, size=64, bands=("R", "G", "B", "NIR1"))


def test_per_band_statistics_of_the_train_chips_reach_the_manifest(tmp_path):
    train, val = reflectance(4, 64, 64, seed=1), reflectance(4, 64, 64, seed=2) // 2
    train[3] = train[3] // 4 + 1000  # a band of its own range
    images = {"T": write_product(tmp_path / "t.tif", train),
              "V": write_product(tmp_path / "v.tif", val)}
    _, _, manifest = chip_scenes(tmp_path, images, {"T": "train", "V": "val"}, size=64,
                                 overlap=0, bands=(1, 2, 3, 4), stretch=False)
    stats = manifest["band_stats"]  # of the train scene only
    values = train.reshape(4, -1).astype(np.float64)
    assert stats["dtype"] == "uint16" and stats["pixels"] == [64 * 64] * 4
    np.testing.assert_allclose(stats["mean"], values.mean(1), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], values.std(1), rtol=1e-4)
    for percentile in ("2", "50", "98"):  # the middle of the 16 levels of a histogram bin
        np.testing.assert_allclose(
            stats["percentiles"][percentile],
            np.percentile(values, float(percentile), axis=1, method="inverted_cdf"), atol=8)
    scaling = InputScaling.of_stats(stats, 4, (2.0, 98.0))
    assert scaling.low == tuple(stats["percentiles"]["2"])
    assert scaling.high == tuple(stats["percentiles"]["98"])


def test_8bit_chips_keep_their_plain_scaling():
    stats = {"dtype": "uint8", "percentiles": {"2": [5] * 3, "98": [250] * 3}}
    scaling = InputScaling.of_stats(stats, 3, (2.0, 98.0))
    assert (scaling.low, scaling.high) == ((0.0,) * 3, (255.0,) * 3)


@pytest.mark.parametrize("chipping, message", [
    ({"bands": [1, 2, 3, 4], "image_format": "png"}, r"4 bands .* need image_format: tiff"),
    ({"stretch": False}, "stretch: false .* needs image_format: tiff"),
    ({"bands": ["B4", "B3", "B2", "B8"], "rgb_bands": ["B4", "B3", "B5"],
      "image_format": "tiff"}, r"rgb_bands must name 3 of the chipped bands"),
    ({"image_format": "tiff", "geotiff": True}, "GeoTIFFs already"),
])
def test_band_settings_that_cannot_work_stop_the_run_before_any_job(chipping, message):
    config = {"datasets": {"d": {"format": "sample"}}, "models": {"m": {}},
              "chipping": chipping}
    with pytest.raises(ConfigError, match=message):
        validate(config, ["m"])
