"""N-band chips at full bit depth, their per-band statistics, and models that take N bands."""

from __future__ import annotations

import copy
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tiny_chips
import torch
import yaml
from conftest import ROOT
from rasterio.transform import from_origin

from nadir.chip import write_chip_manifest
from nadir.chip.shard import chip_shard
from nadir.coco.files import build_coco
from nadir.config import ConfigError, validate
from nadir.config.catalogue import CATALOGUE
from nadir.config.runs import dataset_chipping, runs
from nadir.core.errors import InputError
from nadir.datasets.dota import parse_label_file
from nadir.datasets.sample import SampleSpec, classes, write_scene
from nadir.datasets.tables import Annotation
from nadir.predict import InferenceSettings, SceneSource, predict_scene
from nadir.raster.band_stats import InputScaling
from nadir.raster.chip_params import ChipParams
from nadir.report.dataset_stats import band_section
from nadir.storage.shards import decode_chip
from nadir.train import train
from nadir.train.models import build_detector
from nadir.train.models.bands import (
    InputBands,
    adapt_first_conv,
    adapt_to_bands,
    adapted_weight,
)

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


def test_8bit_chips_keep_their_plain_scaling_and_float_chips_use_mean_and_std():
    stats = {"dtype": "uint8", "percentiles": {"2": [5] * 3, "98": [250] * 3}}
    scaling = InputScaling.of_stats(stats, 3, (2.0, 98.0))
    assert (scaling.low, scaling.high) == ((0.0,) * 3, (255.0,) * 3)
    pixels = torch.randint(0, 256, (3, 8, 8)).float()
    assert torch.equal(scaling.apply(pixels), pixels / 255.0)
    reflectance = {"dtype": "float32", "percentiles": None, "mean": [0.2, 0.3],
                   "std": [0.05, 0.1]}
    scaling = InputScaling.of_stats(reflectance, 2, (2.0, 98.0))
    assert scaling.low == pytest.approx((0.1, 0.1)) and scaling.high == pytest.approx((0.3, 0.5))
    scaled = scaling.apply(torch.tensor([0.2, 0.5]).reshape(2, 1, 1))
    assert scaled.flatten().tolist() == pytest.approx([0.5, 1.0])


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


# --- models ---------------------------------------------------------------------------------

# One model per way a family meets its input: torchvision's transform, the oriented model's
# own normalisation, YOLOX's Focus stem (four BGR pixel phases). Which convolution is adapted
# in every catalogue model: test_every_catalogue_model_but_detectron2s_has_its_stem_adapted.
FAMILIES = ["fcos_resnet18_fpn", "oriented_fcos_resnet18_fpn", "yolox_s"]


def trunk(detector: torch.nn.Module) -> torch.nn.Module:
    """The part of a detector that the adapted stem and normalisation feed."""
    if hasattr(detector, "backbone"):
        return detector.backbone
    inner = detector.detector
    return inner.backbone if hasattr(inner, "backbone") else inner.model.backbone


def features(detector: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Every feature map the trunk hands the detection head, for `images`."""
    seen = []
    handle = trunk(detector).register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.no_grad():
        detector(list(images))
    handle.remove()
    out = seen[0]
    out = list(out.values()) if isinstance(out, dict) else list(out)
    return [o[0] if isinstance(o, tuple) else o for o in out]  # DETR's: (map, mask) pairs


def test_a_first_convolution_adapted_to_rgb_in_rgb_order_is_the_pretrained_one():
    weight = torch.randn(16, 12, 3, 3)  # 4 groups of RGB, as YOLOX's Focus stem has
    assert torch.equal(adapted_weight(weight, 3, (0, 1, 2)), weight)
    four = adapted_weight(weight, 4, (0, 1, 2)).reshape(16, 4, 4, 3, 3)
    grouped = weight.reshape(16, 4, 3, 3, 3)
    assert torch.equal(four[:, :, :3], grouped)
    torch.testing.assert_close(four[:, :, 3], grouped.mean(2) * 3 / 4)
    bgr = adapted_weight(weight[:, :3], 5, (4, 2, 0), source_rgb=(2, 1, 0))
    assert [torch.equal(bgr[:, p], weight[:, s]) for p, s in [(4, 2), (2, 1), (0, 0)]] == [True] * 3


@pytest.mark.parametrize("model", FAMILIES)
def test_adapted_models_compute_the_rgb_models_features_when_the_extra_band_is_zero(model):
    torch.manual_seed(0)
    rgb_model = build_detector(model, 2, 64).eval()
    rgb = torch.rand(1, 3, 64, 64)
    expected = features(rgb_model, rgb)
    three = copy.deepcopy(rgb_model)  # adapted to 3 bands in RGB order: the same model
    adapt_first_conv(trunk(three), InputBands(3, (0, 1, 2)),
                     source_rgb=(2, 1, 0) if model == "yolox_s" else (0, 1, 2))
    if model == "yolox_s":
        three.bgr = False  # the adapted stem takes the bands in chip order
    for got, want in zip(features(three, rgb), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    four = adapt_to_bands(copy.deepcopy(rgb_model), InputBands(4, (0, 1, 2)))
    for got, want in zip(features(four, torch.cat([rgb, torch.zeros(1, 1, 64, 64)], 1)),
                         expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # Bands in another order: the RGB filters follow red, green and blue to their places.
    moved = adapt_to_bands(copy.deepcopy(rgb_model), InputBands(5, (3, 0, 4)))
    shuffled = torch.zeros(1, 5, 64, 64)
    shuffled[:, [3, 0, 4]] = rgb
    for got, want in zip(features(moved, shuffled), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # ... and a band that is not zero changes them.
    shuffled[:, 1] = 1.0
    assert not all(torch.allclose(got, want, rtol=1e-3, atol=1e-6)
                   for got, want in zip(features(moved, shuffled), expected, strict=True))


# One catalogue model per trunk (the others share its stem: ResNet-50's detectors ResNet-18's
# conv1, YOLOX-m/l/x YOLOX-s's Focus stem, DETR-R101 and Deformable DETR DETR-R50's embedder).
TRUNKS = ["ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "fcos_resnet18_fpn",
          "retinanet_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
          "fasterrcnn_convnext_tiny_fpn", "fasterrcnn_swin_t_fpn", "detr_r50", "yolox_s",
          "yolov3"]


def test_every_trunk_in_the_catalogue_but_detectron2s_has_its_stem_adapted():
    """Built on the meta device (no memory, no initialisation): the one convolution that the
    adaptation replaces is the trunk's stem, now taking 4 bands (YOLOX's Focus stem 4 x 4)."""
    assert {CATALOGUE[name].backend for name in TRUNKS} == {
        model.backend for model in CATALOGUE.values()} - {"detectron2"}
    for name in TRUNKS:
        with torch.device("meta"):
            detector = build_detector(name, 2, 64)
            before = {id(module) for module in detector.modules()}
            adapt_to_bands(detector, InputBands(4, (2, 1, 0)))
        new = [(path, module.in_channels) for path, module in detector.named_modules()
               if id(module) not in before]
        assert len(new) == 1, name
        path, inputs = new[0]
        assert inputs == (16 if name == "yolox_s" else 4)
        assert path.split(".")[-1] in ("conv1", "0", "conv", "convolution"), (name, path)


def test_band_mixing_starts_as_the_rgb_model_on_its_rgb_bands():
    torch.manual_seed(0)
    rgb_model = build_detector("fcos_resnet18_fpn", 2, 64).eval()
    rgb = torch.rand(1, 3, 64, 64)
    mixed = adapt_to_bands(copy.deepcopy(rgb_model), InputBands(40, (29, 19, 9), mixing=True))
    bands = torch.rand(1, 40, 64, 64)
    bands[:, [29, 19, 9]] = rgb
    for got, want in zip(features(mixed, bands), features(rgb_model, rgb), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert mixed.band_mixing.mix.weight.shape == (3, 40, 1, 1)
    assert mixed.band_mixing.mix.weight.requires_grad


# --- N-band scenes end to end: chips, a few training steps, inference -----------------------

def nir_scene(path: Path, bands: int, size: int = 96, seed: int = 0
              ) -> tuple[Path, list[Annotation]]:
    """A 16-bit scene of `bands` named bands whose two objects show in its last band only."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(900, 1100, size=(bands, size, size), dtype=np.uint16)
    boxes = [(10, 12, 34, 30), (50, 55, 80, 70)]
    for x0, y0, x1, y1 in boxes:
        pixels[-1, y0:y1, x0:x1] = 4000
    write_product(path, pixels, [f"B{i}" for i in range(1, bands + 1)])
    return path, [Annotation("S", n, "target", 0, [x0, y0, x1, y0, x1, y1, x0, y1])
                  for n, (x0, y0, x1, y1) in enumerate(boxes)]


@pytest.mark.parametrize("model, bands", [("fcos_resnet18_fpn", 13), ("yolox_s", 8),
                                         ("detr_r50", 8)])
def test_16bit_multiband_scenes_chip_train_and_predict(model, bands, tmp_path):
    image, objects = nir_scene(tmp_path / "scene.tif", bands)
    params = ChipParams(size=64, overlap=32, empty_keep=1.0, image_format="tiff",
                        stretch=False, bands=tuple(f"B{i}" for i in range(1, bands + 1)),
                        rgb_bands=("B4", "B3", "B2"))
    chip_shard([{"scene": "S", "split": "train"}], {"S": objects}, {"S": image}, params,
               tmp_path / "shard-000.tar", tmp_path / "shard-000.json")
    write_chip_manifest([tmp_path / "shard-000.json"], tmp_path / "manifest.json")
    coco = build_coco([tmp_path / "shard-000.json"], [{"id": 1, "name": "target"}], ["train"])
    (tmp_path / "train.json").write_text(json.dumps(coco["train"]))
    hp = tiny_chips.model_training(model, iterations=2, log_interval=1, batch_size=2)
    out = tmp_path / "run"
    result = train(dataset="ms", model=model, hp=hp, train=tmp_path / "train.json",
                   manifest=tmp_path / "manifest.json", shards=[tmp_path / "shard-000.tar"],
                   weights=out / "model.pt", train_log=out / "train_log.json",
                   run_record=out / "run.json", resolved_config=out / "resolved.json")
    assert result["training"]["iterations"] == 2
    assert result["bands"]["bands"][-1] == f"B{bands}"
    assert result["bands"]["rgb_bands"] == ["B4", "B3", "B2"]
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["chipping"]["bands"] == [f"B{i}" for i in range(1, bands + 1)]
    low = saved["input"]["scaling"]["low"]  # from the train chips' 16-bit values
    assert len(low) == bands and 890 < low[0] < 1000

    outputs = {kind: tmp_path / "inference" / name for kind, name in [
        ("geojson", "d.geojson"), ("geopackage", "d.gpkg"), ("summary", "summary.json"),
        ("quicklook", "quicklook.png")]}
    settings = InferenceSettings.from_config({"inference": {"score_threshold": 0.0}})
    summary = predict_scene(SceneSource("S", str(image), False), out / "model.pt",
                            out / "run.json", settings, outputs)
    assert summary["detections"] > 0 and outputs["geojson"].exists()
    # A scene without the model's bands is refused, naming them.
    fewer, _ = nir_scene(tmp_path / "fewer.tif", bands - 1)
    with pytest.raises(InputError, match=rf"fewer\.tif: lacks band\(s\) \['B{bands}'\]"):
        predict_scene(SceneSource("F", str(fewer), False), out / "model.pt", out / "run.json",
                      settings, outputs)


# --- the multispectral sample ---------------------------------------------------------------

def test_the_sample_hides_its_nir_class_from_rgb(tmp_path):
    """16-bit 4-band scenes: nir-vehicles change the nir band and nothing in red, green, blue;
    the classes the 3-band sample has are drawn in all four bands."""
    spec = SampleSpec(train_scenes=1, val_scenes=0, scene_size=192, objects_per_scene=12,
                      seed=3, bands=4, bit_depth=16)
    write_scene(spec, "train", "T0000", tmp_path / "s.tif", tmp_path / "s.txt")
    with rasterio.open(tmp_path / "s.tif") as src:
        pixels, descriptions = src.read().astype(np.float64), src.descriptions
    assert descriptions == ("red", "green", "blue", "nir") and pixels.max() > 255
    labels = parse_label_file(tmp_path / "s.txt", classes(4)).objects
    assert {o.category for o in labels} >= {"nir-vehicle", "plane"}
    ground = pixels[:, 2:-2, 2:-2].reshape(4, -1)
    for obj in labels:
        xs, ys = obj.polygon[0::2], obj.polygon[1::2]
        cx, cy = int(np.mean(xs)), int(np.mean(ys))
        inside = pixels[:, cy - 2:cy + 3, cx - 2:cx + 3].reshape(4, -1).mean(1)
        contrast = np.abs(inside - np.median(ground, axis=1)) / ground.std(1)
        if obj.category == "nir-vehicle":
            assert contrast[3] > 3 and (contrast[:3] < 1.5).all(), contrast
        else:
            assert contrast[3] > 0.5 or contrast[:3].max() > 1, (obj.category, contrast)
    assert classes(4) == [*classes(3), "nir-vehicle"]


def test_the_multispectral_config_trains_one_model_on_4_bands_and_on_rgb():
    """config/multispectral.yaml (a documented command, not run in CI: minutes of training):
    two datasets generated alike, chipped with 4 bands and with RGB, at full bit depth."""
    config = validate(yaml.safe_load((ROOT / "config" / "multispectral.yaml").read_text()),
                      list(CATALOGUE))
    generated = [{k: v for k, v in config["datasets"][d].items() if k != "chipping"}
                 for d in ("sample_4band", "sample_rgb")]
    assert generated[0] == generated[1] and generated[0]["bands"] == 4
    chips = {d: ChipParams.from_config(dataset_chipping(config, d)) for d in config["datasets"]}
    assert chips["sample_4band"].bands == ("red", "green", "blue", "nir")
    assert chips["sample_rgb"].bands == ("red", "green", "blue")
    assert all(not c.stretch and c.image_format == "tiff" for c in chips.values())
    assert {run.dataset for run in runs(config)} == {"sample_4band", "sample_rgb"}


def test_the_dataset_page_lists_the_train_chips_band_statistics():
    stats = {"bands": ["red", "nir"], "dtype": "uint16", "mean": [1200.5, 3400.25],
             "std": [80.0, 410.0], "percentiles": {"2": [1000.5, 2600.5], "98": [1400.5, 4200.5]}}
    heading, table = band_section(stats)
    assert "uint16" in heading
    assert "<td>nir</td><td>3400.25</td><td>410.0</td><td>2600.5</td><td>4200.5</td>" in table
    assert band_section(None) == []
