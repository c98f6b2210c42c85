"""The chip stage on scenes these tests write with rasterio (GDAL): windows, clipping, nodata,
radiometry, formats, determinism, and the chip stage of the workflow."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import rasterio.shutil
from conftest import ROOT, run_snakemake
from PIL import Image
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.windows import Window

from nadir.chip import encode as encoding
from nadir.chip import write_chip_manifest
from nadir.chip.encode import encode
from nadir.chip.shard import chip_shard
from nadir.config import ConfigError, validate
from nadir.core.errors import InputError, NadirError
from nadir.datasets.tables import Annotation
from nadir.raster.chip_params import ChipParams
from nadir.raster.radiometry import Radiometry
from nadir.raster.windows import WindowReader, gdal_settings, window_offsets

TRANSFORM = from_origin(300_000.0, 4_000_000.0, 0.5, 0.5)
CRS = "EPSG:32631"


def write_raster(path: Path, pixels: np.ndarray, layout: str = "tiled",
                 nodata: float | None = None) -> Path:
    """Write (bands, rows, cols) pixels as a tiled or striped GeoTIFF or as a PNG."""
    bands, height, width = pixels.shape
    profile = {"width": width, "height": height, "count": bands, "dtype": pixels.dtype.name}
    if layout == "png":
        with MemoryFile() as mem:  # GDAL writes PNG only by copying another dataset
            with mem.open(driver="GTiff", **profile) as tmp:
                tmp.write(pixels)
            with mem.open() as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):
                rasterio.shutil.copy(tmp, path, driver="PNG")
        return path
    profile.update(driver="GTiff", crs=CRS, transform=TRANSFORM, nodata=nodata)
    if layout == "tiled":
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    else:
        profile.update(tiled=False, blockysize=8)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def position_pixels(width: int, height: int) -> np.ndarray:
    """3-band uint8 pixels from which a chip's position can be read back."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 251, y % 241, (x // 251 + 7 * (y // 241)) % 256]).astype(np.uint8)


def noisy_pixels(width: int, height: int) -> np.ndarray:
    """3-band uint8 pixels with fine noise on a gradient, as imagery has (PNG filters and
    JPEG quantisation both have work to do)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width]
    gradient = np.stack([x * 2, y * 3, (x + y) * 1.5]) % 200 + 20
    return (gradient + rng.normal(0, 8, gradient.shape)).clip(0, 255).astype(np.uint8)


def square(scene: str, index: int, x0: float, y0: float, x1: float, y1: float,
           category: str = "plane") -> Annotation:
    return Annotation(scene, index, category, 0, [x0, y0, x1, y0, x1, y1, x0, y1])


def chip(tmp_path: Path, image: Path, annotations: list[Annotation] = (), scene: str = "S",
         threads: int = 1, tag: str = "shard", **settings) -> tuple[dict, Path]:
    """Chip one scene into a shard under tmp_path; returns (shard JSON, tar path)."""
    params = ChipParams(**{"image_format": "png", "empty_keep": 1.0, **settings})
    tar, listing = tmp_path / f"{tag}.tar", tmp_path / f"{tag}.json"
    summary = chip_shard([{"scene": scene, "split": "train"}], {scene: list(annotations)},
                         {scene: image}, params, tar, listing, threads=threads)
    result = json.loads(listing.read_text())
    assert summary == {k: v for k, v in result.items() if k != "chips"}
    return result, tar


def tar_members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def decoded(data: bytes) -> np.ndarray:
    """A PNG chip as (bands, rows, cols)."""
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def chips_by_position(result: dict) -> dict[tuple[int, int], dict]:
    return {(c["x"], c["y"]): c for c in result["chips"]}


# --- window placement -----------------------------------------------------------------------

@pytest.mark.parametrize("length, size, overlap, expected", [
    (640, 256, 32, [0, 224, 384]),
    (448, 256, 32, [0, 192]),
    (512, 256, 0, [0, 256]),
    (257, 256, 32, [0, 1]),
    (256, 256, 32, [0]),
    (100, 256, 32, [0]),
])
def test_window_offsets_step_by_stride_and_end_flush_with_the_edge(length, size, overlap,
                                                                   expected):
    assert window_offsets(length, size, overlap) == expected


def test_window_offsets_cover_every_pixel_with_at_least_the_overlap():
    for length in range(256, 1200, 37):
        offsets = window_offsets(length, 256, 48)
        assert offsets[0] == 0 and offsets[-1] + 256 == length
        gaps = np.diff(offsets)
        assert (gaps <= 256 - 48).all() and (gaps > 0).all()


@pytest.mark.parametrize("layout", ["tiled", "striped", "png"])
def test_edge_chips_hold_the_scene_pixels_flush_with_the_edge(tmp_path, layout):
    pixels = position_pixels(300, 230)
    image = write_raster(tmp_path / f"scene.{'png' if layout == 'png' else 'tif'}", pixels,
                         layout)
    result, tar = chip(tmp_path, image, size=128, overlap=16)
    members = tar_members(tar)
    chips = chips_by_position(result)
    assert sorted(chips) == sorted((x, y) for x in [0, 112, 172] for y in [0, 102])
    for (x, y), record in chips.items():
        assert (record["width"], record["height"]) == (128, 128)
        np.testing.assert_array_equal(decoded(members[record["file"]]),
                                      pixels[:, y:y + 128, x:x + 128])


def test_scene_smaller_than_a_chip_gives_one_padded_chip(tmp_path):
    pixels = position_pixels(100, 70)
    image = write_raster(tmp_path / "small.tif", pixels)
    result, tar = chip(tmp_path, image, [square("S", 0, 10, 10, 30, 40)], size=128,
                       pad_value=7)
    [record] = result["chips"]
    assert (record["x"], record["y"], record["width"], record["height"]) == (0, 0, 128, 128)
    out = decoded(tar_members(tar)[record["file"]])
    np.testing.assert_array_equal(out[:, :70, :100], pixels)
    assert (out[:, 70:, :] == 7).all() and (out[:, :, 100:] == 7).all()
    [obj] = record["objects"]
    assert obj["bbox"] == [10, 10, 20, 30] and obj["truncated"] is False


# --- objects cut by chip borders ------------------------------------------------------------

def test_object_on_a_chip_corner_is_clipped_in_each_of_the_four_chips(tmp_path):
    image = write_raster(tmp_path / "scene.tif", position_pixels(512, 512))
    corner = [square("S", 0, 236, 236, 276, 276)]  # 40 x 40, centred on the corner (256, 256)
    result, _ = chip(tmp_path, image, corner, size=256, overlap=0, min_visible=0.25)
    chips = chips_by_position(result)
    expected_boxes = {(0, 0): [236, 236, 20, 20], (256, 0): [0, 236, 20, 20],
                      (0, 256): [236, 0, 20, 20], (256, 256): [0, 0, 20, 20]}
    for position, bbox in expected_boxes.items():
        [obj] = chips[position]["objects"]
        assert obj["bbox"] == bbox and obj["truncated"] is True and obj["visible"] == 0.25
    assert result["scenes"]["S"]["objects_truncated"] == 4

    result, _ = chip(tmp_path, image, corner, size=256, overlap=0, min_visible=0.7, tag="b")
    counts = result["scenes"]["S"]
    assert all(not c["objects"] for c in result["chips"])
    assert counts["fragments_dropped"] == 4 and counts["objects_in_no_chip"] == 1


@pytest.mark.parametrize("left, kept", [(186, True), (187, False)])
def test_object_exactly_at_the_visibility_threshold_is_kept(tmp_path, left, kept):
    # 100 px wide; the chip border at x = 256 leaves (256 - left) % of it in the first chip.
    image = write_raster(tmp_path / "scene.tif", position_pixels(512, 256))
    result, _ = chip(tmp_path, image, [square("S", 0, left, 100, left + 100, 120)], size=256,
                     overlap=0, min_visible=0.7)
    first = chips_by_position(result)[(0, 0)]["objects"]
    assert bool(first) is kept
    if kept:
        assert first[0]["visible"] == 0.7 and first[0]["truncated"] is True
        assert first[0]["bbox"] == [186, 100, 70, 20]
    counts = result["scenes"]["S"]
    assert counts["fragments_dropped"] == (1 if kept else 2)
    assert counts["objects_in_no_chip"] == (0 if kept else 1)


def test_rotated_object_clipped_by_a_border_keeps_all_its_corners(tmp_path):
    image = write_raster(tmp_path / "scene.tif", position_pixels(512, 256))
    diamond = Annotation("S", 0, "ship", 1, [210, 100, 240, 70, 270, 100, 240, 130])
    result, _ = chip(tmp_path, image, [diamond], size=256, overlap=0)
    [obj] = chips_by_position(result)[(0, 0)]["objects"]
    corners = list(zip(obj["polygons"][0][0::2], obj["polygons"][0][1::2], strict=True))
    assert len(corners) == 5
    assert set(corners) == {(210, 100), (240, 70), (256, 86), (256, 114), (240, 130)}
    assert obj["bbox"] == [210, 70, 46, 60]
    assert obj["visible"] == pytest.approx(1 - 14 * 14 / 1800, abs=1e-6)
    assert obj["truncated"] is True and obj["difficult"] == 1 and obj["category"] == "ship"
    assert not chips_by_position(result)[(256, 0)]["objects"]  # 11% visible: dropped
    assert result["scenes"]["S"]["fragments_dropped"] == 1


def test_object_overhanging_the_scene_edge_counts_only_its_part_inside(tmp_path):
    image = write_raster(tmp_path / "scene.tif", position_pixels(200, 200))
    result, _ = chip(tmp_path, image, [square("S", 0, 180, 50, 220, 60)], size=256,
                     min_visible=0.4)
    [obj] = result["chips"][0]["objects"]
    assert obj["visible"] == 0.5 and obj["bbox"] == [180, 50, 20, 10]


def test_object_wholly_inside_a_chip_keeps_its_outline_and_vertex_order(tmp_path):
    # DOTA lists an object's corners clockwise from its "head": the order carries orientation.
    image = write_raster(tmp_path / "scene.tif", position_pixels(512, 256))
    ship = Annotation("S", 0, "ship", 0, [330, 40, 350, 60, 310, 100, 290, 80])
    result, _ = chip(tmp_path, image, [ship], size=256, overlap=0)
    [obj] = chips_by_position(result)[(256, 0)]["objects"]
    assert obj["polygons"] == [[74, 40, 94, 60, 54, 100, 34, 80]]
    assert obj["bbox"] == [34, 40, 60, 60]
    assert obj["visible"] == 1.0 and obj["truncated"] is False


def test_self_crossing_outline_is_repaired_before_it_is_measured(tmp_path):
    # A "bow tie" (corners listed in the wrong order) is two triangles of 200 px² each.
    image = write_raster(tmp_path / "scene.tif", position_pixels(256, 256))
    bow_tie = Annotation("S", 0, "plane", 0, [100, 100, 120, 120, 120, 100, 100, 120])
    result, _ = chip(tmp_path, image, [bow_tie], size=256)
    [obj] = result["chips"][0]["objects"]
    assert len(obj["polygons"]) == 2 and obj["visible"] == 1.0
    assert obj["bbox"] == [100, 100, 20, 20]


def test_self_crossing_outline_with_a_spike_keeps_every_box_in_place(tmp_path):
    # make_valid's default turns this outline into a collection of two triangles and a line
    # (the spike to x = 25); the objects after it must keep their own boxes.
    image = write_raster(tmp_path / "scene.tif", position_pixels(256, 256))
    spiked = Annotation("S", 0, "plane", 0, [10, 10, 20, 20, 20, 10, 25, 10, 20, 10, 10, 20])
    result, _ = chip(tmp_path, image, [spiked, square("S", 1, 100, 100, 140, 120)], size=256)
    first, second = result["chips"][0]["objects"]
    assert first["object"] == 0 and first["bbox"] == [10, 10, 10, 10]
    assert len(first["polygons"]) == 2 and first["visible"] == 1.0
    assert second["object"] == 1 and second["bbox"] == [100, 100, 40, 20]


# --- empty and nodata chips -----------------------------------------------------------------

def test_empty_chips_are_kept_at_the_configured_rate_reproducibly(tmp_path):
    image = write_raster(tmp_path / "empty.tif", position_pixels(1024, 1024))
    runs = {tag: chip(tmp_path, image, size=64, overlap=0, empty_keep=0.3, seed=seed,
                      tag=tag)[0]
            for tag, seed in [("a", 0), ("b", 0), ("c", 1)]}
    kept = {tag: [(c["x"], c["y"]) for c in r["chips"]] for tag, r in runs.items()}
    assert kept["a"] == kept["b"]
    assert kept["a"] != kept["c"]
    counts = runs["a"]["scenes"]["S"]
    assert counts["empty_kept"] == len(kept["a"])
    assert counts["empty_kept"] + counts["empty_skipped"] == 256
    assert 0.2 < counts["empty_kept"] / 256 < 0.4  # binomial(256, 0.3): 3.4 sd either side
    none = chip(tmp_path, image, size=64, overlap=0, empty_keep=0.0, tag="d")[0]
    assert none["chips"] == [] and none["scenes"]["S"]["empty_skipped"] == 256


@pytest.mark.parametrize("layout", ["tiled", "striped"])
def test_nodata_heavy_chips_are_skipped_and_nodata_pixels_padded(tmp_path, layout):
    pixels = position_pixels(512, 256)
    pixels[:, :, :300] = 0  # columns 0-299 are nodata: chip 0 all of it, chip 256 17% of it
    image = write_raster(tmp_path / "nodata.tif", pixels, layout, nodata=0)
    result, tar = chip(tmp_path, image, size=256, overlap=0, nodata_max=0.5, pad_value=9)
    assert [(c["x"], c["y"]) for c in result["chips"]] == [(256, 0)]
    assert result["scenes"]["S"]["nodata_skipped"] == 1
    out = decoded(tar_members(tar)[result["chips"][0]["file"]])
    assert (out[:, :, :44] == 9).all()
    np.testing.assert_array_equal(out[:, :, 44:], pixels[:, :, 300:])


# --- radiometry -----------------------------------------------------------------------------

def multispectral_pixels(width: int, height: int) -> np.ndarray:
    """8 uint16 bands: band k is 1000 k plus a ramp, so every band is recognisable."""
    y, x = np.mgrid[0:height, 0:width]
    bands = [1000 * k + (x if k % 2 else y) * 10 for k in range(1, 9)]
    return np.stack(bands).astype(np.uint16)


def test_16bit_8band_scene_is_stretched_per_selected_band(tmp_path):
    pixels = multispectral_pixels(200, 150)
    pixels[:, :10, :10] = 0  # nodata: ignored by the percentiles, painted with pad_value
    image = write_raster(tmp_path / "ms.tif", pixels, nodata=0)
    result, tar = chip(tmp_path, image, size=256, bands=(5, 3, 2), stretch_percentiles=(0, 100),
                       pad_value=0)
    out = decoded(tar_members(tar)[result["chips"][0]["file"]]).astype(np.float64)
    for channel, band in enumerate([5, 3, 2]):
        source = pixels[band - 1].astype(np.float64)
        valid = source > 0
        lo, hi = source[valid].min(), source[valid].max()
        expected = np.clip(np.floor((source - lo) / (hi - lo) * 255 + 0.5), 0, 255)
        np.testing.assert_allclose(out[channel, :150, :200][valid], expected[valid], atol=1)
    assert out[0, :150, :200].max() == 255 and out[0, 10:, 10:].min() == 0
    assert (out[:, :10, :10] == 0).all()


def test_stretch_percentiles_come_from_a_decimated_read(tmp_path):
    pixels = np.tile(np.arange(2100, dtype=np.uint16) * 3, (1, 40, 1))  # one band, a ramp
    image = write_raster(tmp_path / "wide.tif", pixels)
    with rasterio.open(image) as src:
        radiometry = Radiometry(src, ChipParams(stretch_percentiles=(10, 90)))
    lo, hi = (v.item() for v in radiometry.scale)
    assert radiometry.bands == [1]
    assert lo == pytest.approx(0.1 * 6297, rel=0.02) and hi == pytest.approx(0.9 * 6297, rel=0.02)


def test_a_band_the_image_lacks_is_an_error_naming_the_image(tmp_path):
    image = write_raster(tmp_path / "ms.tif", multispectral_pixels(64, 64))
    with pytest.raises(InputError, match=r"ms\.tif: lacks band\(s\) \[9\] .* it has 8 band"):
        chip(tmp_path, image, bands=(9, 3, 2))


def test_settings_that_cannot_make_a_chip_are_rejected_before_any_job():
    config = {"datasets": {"d": {"format": "sample"}}, "models": {"m": {}},
              "chipping": {"bands": [5, 3]}}
    with pytest.raises(ConfigError, match=r"2 bands \(\[5, 3\]\) need image_format: tiff"):
        validate(config, ["m"])
    with pytest.raises(NadirError, match="unknown chipping setting"):
        ChipParams.from_config({"sise": 256})


# --- formats and reading --------------------------------------------------------------------

class ReadSpy:
    """Wraps an open raster and records the rows of every read."""

    def __init__(self, src):
        self._src, self.rows = src, []

    def __getattr__(self, name):
        return getattr(self._src, name)

    def read(self, *args, window=None, **kwargs):
        self.rows.append((window.row_off, window.row_off + window.height))
        return self._src.read(*args, window=window, **kwargs)


@pytest.mark.parametrize("threaded", [False, True], ids=["on-the-caller", "decoding-thread"])
def test_png_scenes_are_read_top_to_bottom_each_row_once(tmp_path, threaded):
    pixels = position_pixels(300, 600)  # GDAL decodes a PNG this size row by row
    image = write_raster(tmp_path / "dota.png", pixels, "png")
    with rasterio.open(image) as src:
        spy = ReadSpy(src)
        reader = WindowReader(spy, [1, 2, 3], 128, ahead=112 if threaded else 0)
        assert not reader.random_access and reader.block_rows == 1
        with reader if threaded else contextlib.nullcontext():
            for y in window_offsets(600, 128, 16):
                for x in window_offsets(300, 128, 16):
                    window = Window(x, y, 128, 128)
                    read = reader.read(window, np.empty((3, 128, 128), np.uint8))
                    assert reader.valid(window) is None
                    np.testing.assert_array_equal(read, pixels[:, y:y + 128, x:x + 128])
    starts, ends = zip(*spy.rows, strict=True)
    assert starts[0] == 0 and ends[-1] == 600
    assert all(e == s for e, s in zip(ends, starts[1:], strict=False))  # contiguous, no re-read
    assert max(e - s for s, e in spy.rows) <= 64  # in small reads, straight into the ring


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_reader_decodes_one_window_row_ahead_and_never_over_a_lent_window(tmp_path):
    pixels = position_pixels(300, 600)  # the second band holds the row number (mod 241)
    image = write_raster(tmp_path / "scene.png", pixels, "png")
    size, stride = 64, 48
    xs, ys = window_offsets(300, size, 16), window_offsets(600, size, 16)
    with rasterio.open(image) as src, WindowReader(src, [1, 2, 3], size, ahead=stride) as reader:
        assert reader.capacity == size + stride
        lent = {y: [reader.lend(Window(x, y, size, size)) for x in xs] for y in ys[:2]}
        # Rows 0-111 hold window rows 0 and 1; row 112 would replace row 0, still lent.
        wait_until(lambda: reader.rows_read == 112)
        time.sleep(0.1)
        assert reader.rows_read == 112

        def assert_intact(y: int) -> None:
            for x, pieces in zip(xs, lent[y], strict=True):
                assert len(pieces) == 1  # window rows 0 and 1 do not wrap around the ring
                np.testing.assert_array_equal(pieces[0], pixels[:, y:y + size, x:x + size])

        assert_intact(0)
        for _ in xs:
            reader.give_back(Window(0, 0, size, size))
        wait_until(lambda: reader.rows_read == 48 + 112)  # up to what window row 1 lends
        time.sleep(0.1)
        assert reader.rows_read == 48 + 112
        assert_intact(48)
        wrapped = reader.lend(Window(0, ys[2], size, size))  # rows 96-159: slots 96-111, 0-47
        assert [piece.shape[1] for piece in wrapped] == [16, 48]
        np.testing.assert_array_equal(np.concatenate(wrapped, axis=1),
                                      pixels[:, 96:160, :size])


def test_slow_encoders_get_their_windows_intact(tmp_path, monkeypatch):
    pixels = position_pixels(300, 600)  # the second band holds the row number (mod 241)
    image = write_raster(tmp_path / "scene.png", pixels, "png")
    original = encoding.encode

    def slow_encode(chip, params):  # the reader would overwrite rows meanwhile, if it could
        time.sleep(0.01 + 0.01 * (chip[0, 0, 0] % 3))
        return original(chip, params)

    monkeypatch.setattr(encoding, "encode", slow_encode)
    result, tar = chip(tmp_path, image, size=64, overlap=16, threads=3)
    members = tar_members(tar)
    assert len(result["chips"]) == 6 * 13
    for record in result["chips"]:
        x, y = record["x"], record["y"]
        np.testing.assert_array_equal(decoded(members[record["file"]]),
                                      pixels[:, y:y + 64, x:x + 64])


def test_a_truncated_png_is_an_error_naming_the_image(tmp_path):
    image = write_raster(tmp_path / "scene.png", noisy_pixels(300, 600), "png")
    image.write_bytes(image.read_bytes()[:image.stat().st_size // 2])
    with pytest.raises(InputError, match=r"scene\.png: cannot read its pixels .*truncated"):
        chip(tmp_path, image, size=64, overlap=16, threads=2)


def test_gdal_decodes_on_the_jobs_threads_only_compressed_tiled_files(tmp_path):
    pixels = position_pixels(300, 230)
    deflate = tmp_path / "deflate.tif"
    with rasterio.open(deflate, "w", driver="GTiff", width=300, height=230, count=3,
                       dtype="uint8", tiled=True, blockxsize=64, blockysize=64,
                       compress="deflate") as dst:
        dst.write(pixels)
    files = {"deflate": deflate, "raw": write_raster(tmp_path / "raw.tif", pixels),
             "png": write_raster(tmp_path / "scene.png", pixels, "png")}
    settings = {}
    for name, path in files.items():
        with rasterio.open(path) as src:
            settings[name] = gdal_settings(src, 128, threads=3)
    assert [s["GDAL_NUM_THREADS"] for s in settings.values()] == [3, 1, 1]
    assert settings["raw"]["GDAL_CACHEMAX"] == 8 << 20  # the tiled minimum
    assert settings["png"]["GDAL_CACHEMAX"] == 1 << 20  # rows are decoded once, into the ring


def test_skipped_empty_windows_of_a_tiled_scene_are_never_read(tmp_path, monkeypatch):
    image = write_raster(tmp_path / "scene.tif", position_pixels(512, 512))
    windows = []
    original = WindowReader.read

    def spy(self, window, out=None):
        windows.append((window.col_off, window.row_off))
        return original(self, window, out)

    monkeypatch.setattr(WindowReader, "read", spy)
    result, _ = chip(tmp_path, image, [square("S", 0, 300, 300, 340, 340)], size=256,
                     overlap=0, empty_keep=0.0)
    assert windows == [(256, 256)] == [(c["x"], c["y"]) for c in result["chips"]]


def test_png_scene_without_georeference_is_chipped(tmp_path):
    pixels = position_pixels(300, 230)
    image = write_raster(tmp_path / "dota.png", pixels, "png")
    result, tar = chip(tmp_path, image, [square("S", 0, 150, 150, 170, 160)], size=128,
                       overlap=16, image_format="jpeg")
    assert result["scenes"]["S"]["crs"] is None
    assert len(result["chips"]) == 6
    record = chips_by_position(result)[(112, 102)]
    assert record["transform"] == [112.0, 1.0, 0.0, 102.0, 0.0, 1.0]
    assert record["objects"][0]["bbox"] == [38, 48, 20, 10]
    jpeg = Image.open(io.BytesIO(tar_members(tar)[record["file"]]))
    assert jpeg.format == "JPEG" and jpeg.size == (128, 128)


def test_chips_can_also_be_stored_as_georeferenced_geotiffs(tmp_path):
    pixels = position_pixels(300, 230)
    image = write_raster(tmp_path / "scene.tif", pixels)
    result, tar = chip(tmp_path, image, size=128, overlap=16, geotiff=True)
    members = tar_members(tar)
    assert len(members) == 2 * len(result["chips"])
    record = chips_by_position(result)[(172, 102)]
    with MemoryFile(members[record["geotiff"]]) as mem, mem.open() as tif:
        assert tif.crs.to_string() == CRS
        assert list(tif.transform)[:6] == [0.5, 0.0, 300_000.0 + 172 * 0.5,
                                           0.0, -0.5, 4_000_000.0 - 102 * 0.5]
        np.testing.assert_array_equal(tif.read(), decoded(members[record["file"]]))
    assert record["transform"] == [300_086.0, 0.5, 0.0, 3_999_949.0, 0.0, -0.5]


# --- determinism and the manifest ------------------------------------------------------------

@pytest.mark.parametrize("layout, pixels, settings", [
    ("tiled", position_pixels(400, 300), {"geotiff": True}),
    ("striped", position_pixels(400, 300), {}),
    ("png", position_pixels(400, 500), {}),  # decoded row by row: several ring wraps
    ("tiled", multispectral_pixels(400, 300), {"bands": (5, 3, 2)}),
    ("striped", multispectral_pixels(400, 300)[:1], {"nodata_max": 0.9}),
], ids=["tiled-geotiff", "striped", "png", "tiled-16bit", "striped-grey-nodata"])
def test_chips_and_manifest_are_identical_whatever_the_thread_count(tmp_path, layout, pixels,
                                                                    settings):
    if "nodata_max" in settings:
        pixels[:, 150:, :250] = 0
    suffix = "png" if layout == "png" else "tif"
    image = write_raster(tmp_path / f"scene.{suffix}", pixels, layout,
                         nodata=0 if "nodata_max" in settings else None)
    objects = [square("S", i, 20 + 37 * i, 15 + 23 * i, 60 + 37 * i, 45 + 23 * i)
               for i in range(10)]
    outputs = []
    for threads in (1, 2, 4, 1):  # and a rerun
        run = f"threads-{threads}-{len(outputs)}"
        result, tar = chip(tmp_path, image, objects, threads=threads, tag=run, size=96,
                           overlap=16, image_format="jpeg", empty_keep=0.5, **settings)
        manifest = tmp_path / f"{run}-manifest.json"
        write_chip_manifest([tmp_path / f"{run}.json"], manifest)
        outputs.append(((tmp_path / f"{run}.json").read_bytes(), tar.read_bytes(),
                        manifest.read_bytes()))
    assert all(output == outputs[0] for output in outputs)
    listing = outputs[0][0].decode()
    assert listing == json.dumps(json.loads(listing), sort_keys=True) + "\n"  # canonical JSON
    assert len(json.loads(listing)["chips"]) > 5
    # Each chip's recorded range is its tar member's data: what a streamed reader fetches.
    with tarfile.open(fileobj=io.BytesIO(outputs[0][1])) as shard:
        members = {m.name: (m.offset_data, m.size) for m in shard}
    assert {c["file"]: (c["offset"], c["size"]) for c in json.loads(listing)["chips"]} == \
        {name: members[name] for name in members if not name.endswith(".tif")}


@pytest.mark.parametrize("bands", [1, 3])
def test_png_chips_decode_to_exactly_the_pixels_cut_with_pillow_and_opencv(bands):
    chip_pixels = noisy_pixels(90, 70)[:bands]
    data = encode(chip_pixels, ChipParams(image_format="png"))
    np.testing.assert_array_equal(decoded(data), chip_pixels)
    by_opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    expected = chip_pixels[0] if bands == 1 else chip_pixels[::-1].transpose(1, 2, 0)  # BGR
    np.testing.assert_array_equal(by_opencv, expected)
    assert encode(chip_pixels, ChipParams(image_format="png")) == data


@pytest.mark.parametrize("bands", [1, 3])
@pytest.mark.parametrize("quality", [90, 40])
def test_jpeg_chips_keep_the_configured_quality(bands, quality):
    """The quantisation tables are what Pillow (libjpeg) writes at that quality, the colours
    are the chip's (closer to them than to the bands reversed), and a lower quality gives a
    smaller file."""
    chip_pixels = noisy_pixels(96, 80)[:bands]
    data = encode(chip_pixels, ChipParams(jpeg_quality=quality))
    interleaved = chip_pixels[0] if bands == 1 else chip_pixels.transpose(1, 2, 0)
    reference = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(interleaved)).save(reference, "JPEG", quality=quality)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == ("L" if bands == 1 else "RGB")
    assert opened.quantization == Image.open(reference).quantization
    pixels = decoded(data).astype(int)
    error, swapped = (np.abs(pixels - expected).mean() for expected in (chip_pixels,
                                                                       chip_pixels[::-1]))
    assert bands == 1 or error < 0.5 * swapped
    assert len(data) < len(encode(chip_pixels, ChipParams(jpeg_quality=quality + 5)))
    # Both are libjpeg-turbo with the same settings: JPEG chips are what nadir wrote with Pillow.
    assert data == reference.getvalue()


def test_manifest_adds_up_every_shard_and_refuses_mixed_parameters(tmp_path):
    image = write_raster(tmp_path / "scene.tif", position_pixels(300, 200))
    objects = [square("S", 0, 10, 10, 40, 40), square("S", 1, 120, 90, 170, 130)]
    first, _ = chip(tmp_path, image, objects, size=128, tag="a")
    second, _ = chip(tmp_path, image, objects, scene="T", size=128, tag="b")
    manifest = write_chip_manifest([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "m.json")
    for key, total in manifest["totals"].items():
        assert total == first["scenes"]["S"][key] + second["scenes"]["T"][key]
    assert manifest["scenes"]["T"]["shard"] == 1 and manifest["params"]["size"] == 128
    chip(tmp_path, image, objects, scene="T", size=96, tag="c")
    with pytest.raises(InputError, match="different parameters"):
        write_chip_manifest([tmp_path / "a.json", tmp_path / "c.json"], tmp_path / "m2.json")


def test_workflow_chip_stage_uses_these_rules(tmp_path):
    run_snakemake(tmp_path, "--configfile", str(ROOT / "config/test.yaml"),
                  "--replace-workflow-config", "results/sample/chips/manifest.json")
    manifest = json.loads((tmp_path / "results/sample/chips/manifest.json").read_text())
    assert manifest["params"]["size"] == 192 and manifest["params"]["geotiff"] is False
    assert manifest["totals"]["chips_written"] == 6 * 9  # 6 scenes of 384 px: 3 x 3 windows
    log = (tmp_path / "logs/sample/chip-000.log").read_text()
    assert "window row 3/3" in log and "chipped scene" in log
