"""Inference on scenes the tests build: the same pixels as chipping, remote reads without a local
copy and within a memory bound, georeferenced and pixel-coordinate outputs, scene sources."""

import io
import json
import logging
import os
import tarfile
import tracemalloc

import boto3
import numpy as np
import pyogrio
import pytest
import rasterio
import tiny_chips
from dataset_builders import FileServer
from PIL import Image
from rasterio.transform import from_origin

import nadir.predict as inference
from nadir.chip.shard import chip_shard
from nadir.core.errors import InputError, NadirError
from nadir.predict import InferenceSettings, SceneSource
from nadir.predict import sources as scene_sources
from nadir.predict.detect import detect_scene, window_chips
from nadir.raster import opener as rasters
from nadir.raster.chip_params import ChipParams
from nadir.raster.windows import WindowCounts

MODEL = "ssdlite320_mobilenet_v3_large"
OUTPUTS = ["geojson", "geopackage", "summary", "quicklook"]


def write_scene(path, pixels, crs="EPSG:32631", driver="GTiff", nodata=None, **options):
    bands, height, width = pixels.shape
    profile = {"driver": driver, "width": width, "height": height, "count": bands,
               "dtype": pixels.dtype.name, "nodata": nodata, **options}
    if crs:
        profile |= {"crs": crs, "transform": from_origin(400_000.0, 5_000_000.0, 0.5, 0.5)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def squares_scene(width=300, height=200, seed=0) -> np.ndarray:
    """Grey noise with the tiny model's red squares and blue bars."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 140, (3, height, width), dtype=np.uint8)
    for x, y in ((30, 20), (150, 90), (240, 150)):
        pixels[:, y:y + 16, x:x + 16] = np.array([230, 30, 30])[:, None, None]
    pixels[:, 60:68, 200:221] = np.array([20, 20, 120])[:, None, None]
    return pixels


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A two-iteration SSDlite run on 64 px chips cut with 16 px of overlap (the chip
    parameters its model.pt carries), with the run.json a training job writes."""
    from nadir.train.loop import LoopBackend

    root = tmp_path_factory.mktemp("tiny-run")
    data = tiny_chips.build(root / "chips", chips=4, size=64, overlap=16)
    out = root / "run"
    LoopBackend().train(tiny_chips.train_job(
        data, MODEL, tiny_chips.hyperparameters(iterations=2, amp=False), out))
    (out / "run.json").write_text(json.dumps({"dataset": "tiny", "model": MODEL}))
    return out / "model.pt", out / "run.json"


def predict(tiny_run, location, out_dir, **settings):
    weights, run_json = tiny_run
    outputs = {k: out_dir / f"detections.{k}" for k in OUTPUTS}
    return inference.predict_scene(
        SceneSource("scene", str(location)), weights, run_json,
        InferenceSettings(score_threshold=0.01, **settings), outputs), outputs


# --- the pixels the model sees ---------------------------------------------------------------

def test_windows_equal_chips_band_selection_stretch_and_nodata(tmp_path):
    """A 16-bit 4-band scene with a nodata corner: every window inference reads equals the chip
    chipping wrote (bands 3,2,1, per-scene stretch, nodata set to the pad value, padded edge),
    and the same windows are skipped as mostly nodata."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(200, 4000, (4, 60, 300), dtype=np.uint16)  # shorter than a window
    pixels[:, :40, :100] = 0  # nodata: most of the first window, part of the second
    scene = write_scene(tmp_path / "s.tif", pixels, nodata=0, tiled=True, blockxsize=32,
                        blockysize=32)
    params = ChipParams(size=64, overlap=8, bands=(3, 2, 1), image_format="png", empty_keep=1.0,
                        pad_value=7)
    shard = chip_shard([{"scene": "s", "split": "val"}], {}, {"s": scene}, params,
                       tmp_path / "shard.tar", tmp_path / "shard.json")
    with tarfile.open(tmp_path / "shard.tar") as tar:
        chips = {m.name: np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())))
                 for m in tar}
    counts = WindowCounts()
    with rasterio.open(scene) as src:
        windows = list(window_chips(src, params, counts))
    assert len(windows) == len(chips) == shard["scenes"]["s"]["chips_written"] == 5
    assert counts.nodata_skipped == shard["scenes"]["s"]["nodata_skipped"] == 1
    for window, chip in windows:
        name = f"s_{window.col_off}_{window.row_off}.png"
        np.testing.assert_array_equal(chip.transpose(1, 2, 0), chips[name])


# --- remote scenes ---------------------------------------------------------------------------

def test_http_cog_is_read_in_ranges_without_a_local_copy_in_bounded_memory(tmp_path,
                                                                           monkeypatch):
    """A 2,048 px noise COG (12 MiB, incompressible) served over HTTP: every request is a range
    request, each byte is served about once, nothing of a scene's size is written anywhere, and
    Python's heap (numpy's arrays included) stays under a tenth of the scene."""
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (3, 2048, 2048), dtype=np.uint8)
    write_scene(served / "big.tif", pixels, driver="COG", compress="deflate", blocksize=256,
                overviews="NONE")
    scene_bytes, file_bytes = pixels.nbytes, (served / "big.tif").stat().st_size
    del pixels
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(work))
    server = FileServer(served)
    windows = []

    def detector(chips):
        windows.append(len(chips))
        return [[] for _ in chips]

    params = ChipParams(size=128, overlap=16)
    settings = InferenceSettings(batch_size=4, quicklook_size=256)
    import torchvision.ops  # noqa: F401 - the merge's NMS; its import is no per-scene cost

    try:
        tracemalloc.start()
        result = detect_scene(SceneSource("big", f"{server.url}/big.tif"), params, detector,
                              settings, threads=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        server.stop()
    assert result.windows["read"] == sum(windows) == 19 * 19 and result.width == 2048
    assert all(rng_header for _, rng_header in server.requests)
    assert server.bytes_served < 1.1 * file_bytes
    written = [p.stat().st_size for p in work.rglob("*") if p.is_file()]
    assert sum(written) < scene_bytes / 100
    assert peak < scene_bytes / 10, f"peak {peak / 2**20:.1f} MiB"


def test_http_and_local_give_the_same_detections_and_geojson_is_lon_lat(tiny_run, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    write_scene(served / "scene.tif", squares_scene(), driver="COG", blocksize=64)
    local, _ = predict(tiny_run, served / "scene.tif", tmp_path / "local")
    server = FileServer(served)
    try:
        remote, outputs = predict(tiny_run, f"{server.url}/scene.tif", tmp_path / "remote")
    finally:
        server.stop()
    assert remote["pixel_detections"] == local["pixel_detections"]
    assert remote["detections"] > 0 and remote["windows"]["read"] == 6 * 4
    features = json.loads(outputs["geojson"].read_text())["features"]
    lon, lat = np.array([p for f in features for p in f["geometry"]["coordinates"][0]]).T
    assert (0 < lon).all() and (lon < 6).all() and (45 < lat).all() and (lat < 46).all()
    assert pyogrio.read_info(outputs["geopackage"])["crs"] == "EPSG:32631"
    assert remote["per_class"] == {
        name: sum(f["properties"]["class"] == name for f in features)
        for name in ("red-square", "blue-bar")}


def test_s3_prefix_is_listed_and_read_with_credentials_from_the_environment(
        tiny_run, tmp_path, s3, monkeypatch):
    scene = write_scene(tmp_path / "scene.tif", squares_scene(), driver="COG", blocksize=64)
    client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name="us-east-1")
    client.create_bucket(Bucket="imagery")
    client.upload_file(str(scene), "imagery", "new/one.tif")
    client.put_object(Bucket="imagery", Key="new/readme.txt", Body=b"not a scene")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_ACCESS_KEY", s3.access_key)
    monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_SECRET_KEY", s3.secret_key)
    listed = scene_sources.list_s3_prefix("s3://imagery/new/", s3.endpoint)
    assert listed == [SceneSource("one", "s3://imagery/new/one.tif")]
    weights, run_json = tiny_run
    outputs = {k: tmp_path / "s3" / f"d.{k}" for k in OUTPUTS}
    remote = inference.predict_scene(listed[0], weights, run_json,
                                     InferenceSettings(score_threshold=0.01), outputs,
                                     s3_endpoint=s3.endpoint)
    local, _ = predict(tiny_run, scene, tmp_path / "local")
    assert remote["pixel_detections"] == local["pixel_detections"]
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ  # handed to GDAL for the read only
    assert s3.secret_key not in outputs["summary"].read_text()


def test_png_tile_georeferenced_by_its_sidecar_locally_and_over_http(tiny_run, tmp_path,
                                                                     monkeypatch):
    """A PNG tile whose georeferencing is in its GDAL PAM sidecar (as RarePlanes' tiles):
    the outputs carry the sidecar's CRS and transform, read locally and over HTTP (a range
    request beside the tile's), with GDAL's PAM on in this process, and no .aux.xml is
    written anywhere."""
    from dataset_builders import write_pam_png

    monkeypatch.delenv("GDAL_PAM_ENABLED", raising=False)
    served = tmp_path / "served"
    write_pam_png(served / "tile.png", squares_scene().transpose(1, 2, 0),
                  from_origin(400_000.0, 5_000_000.0, 0.5, 0.5), "EPSG:32631")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.aux.xml")}
    local, outputs = predict(tiny_run, served / "tile.png", tmp_path / "local")
    assert local["crs"] == "EPSG:32631" and local["georeferenced"]
    assert local["transform"] == [0.5, 0.0, 400_000.0, 0.0, -0.5, 5_000_000.0]
    assert pyogrio.read_info(outputs["geopackage"])["crs"] == "EPSG:32631"
    server = FileServer(served)
    try:
        remote, _ = predict(tiny_run, f"{server.url}/tile.png", tmp_path / "remote")
    finally:
        server.stop()
    assert (remote["crs"], remote["transform"]) == (local["crs"], local["transform"])
    assert remote["pixel_detections"] == local["pixel_detections"]
    assert all(range_header for _, range_header in server.requests)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.aux.xml")} == before


# --- outputs ---------------------------------------------------------------------------------

def test_scene_without_georeferencing_gets_pixel_coordinates_and_a_warning(tiny_run, tmp_path,
                                                                           caplog):
    scene = write_scene(tmp_path / "plain.png", squares_scene(), crs=None, driver="PNG")
    with caplog.at_level(logging.WARNING, logger="nadir.predict.scene"):
        summary, outputs = predict(tiny_run, scene, tmp_path / "out")
    assert "has no georeferencing" in caplog.text
    assert not summary["georeferenced"] and summary["crs"] is None
    geojson = json.loads(outputs["geojson"].read_text())
    coords = np.array([p for f in geojson["features"] for p in f["geometry"]["coordinates"][0]])
    assert len(coords) and coords.min() >= 0 and coords[:, 0].max() <= 300
    assert coords[:, 1].max() <= 200
    first = summary["pixel_detections"][0]["bbox"]
    assert geojson["features"][0]["geometry"]["coordinates"][0][0] == first[:2]
    assert pyogrio.read_info(outputs["geopackage"])["crs"] is None
    assert Image.open(outputs["quicklook"]).size == (300, 200)


def test_the_model_step_and_the_output_step_as_two_jobs_give_what_one_process_gives(
        tiny_run, tmp_path):
    """predict_scene (the model, a GPU job) hands its window detections and the quick-look's
    picture to predict_outputs (merge and files, a CPU job) through two files: the outputs are
    those of both steps in one process, but for the timings."""
    weights, run_json = tiny_run
    scene = write_scene(tmp_path / "scene.tif", squares_scene())
    whole, outputs = predict(tiny_run, scene, tmp_path / "one")
    two = tmp_path / "two"
    inference.detect(weights, str(scene), "scene", False, {"inference": {"score_threshold": 0.01}},
                     two / "windows.json", two / "overview.png")
    split = inference.write_outputs(two / "windows.json", two / "overview.png", run_json,
                                    InferenceSettings().nms_iou,
                                    {k: two / f"detections.{k}" for k in OUTPUTS})
    timings = ("seconds", "windows_per_second")
    assert whole["detections"] > 0
    assert {k: v for k, v in split.items() if k not in timings} == \
        {k: v for k, v in whole.items() if k not in timings}
    for kind in ("geojson", "quicklook"):
        assert (two / f"detections.{kind}").read_bytes() == outputs[kind].read_bytes(), kind


def test_windows_are_cut_with_the_chip_parameters_the_model_carries(tiny_run, tmp_path):
    """The chip size travels from the chip manifest into model.pt, and inference cuts its
    windows with it: 64 px windows with 16 px overlap over a 300 x 200 scene are 6 x 4; a model
    that carries no chip parameters is refused, naming it."""
    import torch

    weights, run_json = tiny_run
    saved = torch.load(weights, weights_only=True)
    assert ChipParams.from_record(saved["chipping"], weights) == ChipParams(
        size=64, overlap=16, image_format="png")
    scene = write_scene(tmp_path / "scene.tif", squares_scene())
    summary, _ = predict(tiny_run, scene, tmp_path / "out")
    assert summary["windows"]["windows"] == 6 * 4
    assert (summary["settings"]["window"], summary["settings"]["overlap"]) == (64, 16)
    del saved["chipping"]
    torch.save(saved, tmp_path / "old.pt")
    with pytest.raises(InputError, match=r"old\.pt: records no chipping parameters"):
        predict((tmp_path / "old.pt", run_json), scene, tmp_path / "old")


# --- scene sources ---------------------------------------------------------------------------

def test_scene_sources_paths_urls_stac_and_prefixes(tmp_path):
    stac = tmp_path / "search.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "S2A 2026/11/30", "assets": {
            "visual": {"href": "https://example.org/a/visual.tif"},
            "data": {"href": "https://example.org/a/data.tif"}}},
        {"type": "Feature", "id": "local-item", "assets": {"data": {"href": "tiles/b.tif"}}}]}))
    scenes = scene_sources.direct_scenes(
        ["scenes/Harbour 1.tif", "https://example.org/x/y.TIF?sig=1", "s3://bucket/k/z.tif",
         "s3://bucket/prefix/", {"name": "mine", "source": "s3://bucket/other.tif"}, str(stac)])
    assert [(s.name, s.location, s.scheme) for s in scenes] == [
        ("Harbour_1", "scenes/Harbour 1.tif", "file"),
        ("y", "https://example.org/x/y.TIF?sig=1", "https"),
        ("z", "s3://bucket/k/z.tif", "s3"),
        ("mine", "s3://bucket/other.tif", "s3"),
        ("S2A_2026_11_30", "https://example.org/a/visual.tif", "https"),
        ("local-item", str(tmp_path / "tiles" / "b.tif"), "file")]
    assert rasters.gdal_path("https://example.org/x/y.tif") == \
        "/vsicurl/https://example.org/x/y.tif"
    assert rasters.gdal_path("s3://bucket/k/z.tif") == "/vsis3/bucket/k/z.tif"
    with pytest.raises(NadirError, match="two inference scenes are named 'z'"):
        scene_sources.check_scene_names([SceneSource("z", "a/z.tif"), SceneSource("z", "b/z.tif")])
    with pytest.raises(InputError, match=r"has none of the assets \['visual'\]"):
        scene_sources.stac_scenes(stac, ["visual"])
    stac.write_text(json.dumps({"type": "Catalog"}))
    with pytest.raises(InputError, match="expected a STAC item collection"):
        scene_sources.stac_scenes(stac)


# --- untrusted catalogues and secret URLs (docs/security.md) ---------------------------------

@pytest.mark.parametrize("href", [
    "/etc/passwd",                                   # a local absolute path
    "../outside.tif",                                # out of the catalogue's folder
    "tiles/../../outside.tif",
    "..\\outside.tif",
    "file:///etc/passwd",
    "/vsicurl/http://169.254.169.254/latest/meta-data/",  # a GDAL prefix
    "//fileserver/share/a.tif",
    "C:\\scenes\\a.tif",
    "ftp://example.org/a.tif",
    "gs://bucket/a.tif",
    "vsis3:/bucket/a.tif",
    "s3://named-bucket/../other-bucket/a.tif",       # GDAL would read another bucket
    "s3://named-bucket//a.tif",
])
def test_a_stac_href_outside_the_allowed_kinds_is_refused_naming_item_and_href(tmp_path, href):
    folder = tmp_path / "catalogue"
    folder.mkdir()
    stac = folder / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "good", "assets": {"visual": {"href": "tiles/a.tif"}}},
        {"type": "Feature", "id": "bad", "assets": {"visual": {"href": href}}}]}))
    with pytest.raises(InputError) as error:
        scene_sources.stac_scenes(stac)
    message = str(error.value)
    assert message.startswith(str(stac)) and f"item 'bad': asset href {href!r}" in message


def test_stac_hrefs_that_are_allowed(tmp_path):
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "Feature", "id": "x", "assets": {"visual": {
        "href": "./tiles/../tiles/é 1.tif"}}}))
    [scene] = scene_sources.stac_scenes(stac)
    assert scene.location == str(tmp_path / "tiles" / "é 1.tif")
    for href in ("https://example.org/a.tif?sig=1", "http://example.org/a.tif", "s3://b/a.tif"):
        stac.write_text(json.dumps({"type": "Feature", "id": "x", "assets": {"visual": {
            "href": href}}}))
        assert scene_sources.stac_scenes(stac)[0].location == href


def test_user_keys_go_only_to_buckets_the_config_names(tiny_run, tmp_path, s3, monkeypatch):
    """A STAC catalogue points at two private buckets; the config names one. Its scene is read
    with the user's keys; the other is read anonymously (refused by the server), and no
    request to it carries a signature, even with AWS_* keys in the environment."""
    from s3proxy import FaultProxy

    scene = write_scene(tmp_path / "scene.tif", squares_scene(), driver="COG", blocksize=64)
    client = s3.client()
    for bucket in ("named-imagery", "foreign-imagery"):
        client.create_bucket(Bucket=bucket)
        client.upload_file(str(scene), bucket, "s/scene.tif")
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": bucket, "assets": {"visual": {
            "href": f"s3://{bucket}-imagery/s/scene.tif"}}} for bucket in ("named", "foreign")]}))
    config = {"inference": {"scenes": ["s3://named-imagery/other/", str(stac)]}, "datasets": {
        "d": {"format": "xview", "source": [{"url": "s3://public-data/x/"}]}}}  # anonymous
    assert scene_sources.buckets_named(config) == {"named-imagery"}
    named, foreign = scene_sources.direct_scenes(config["inference"]["scenes"], None,
                                             scene_sources.buckets_named(config))
    assert (named.anonymous, foreign.anonymous) == (False, True)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    proxy = FaultProxy(s3.endpoint)
    weights, run_json = tiny_run
    try:
        outputs = {k: tmp_path / "named" / f"d.{k}" for k in OUTPUTS}
        # Few detections: the subject is who reads the scene (GeoJSON writing reprojects
        # feature by feature, about 20 ms each here).
        summary = inference.predict_scene(named, weights, run_json,
                                          InferenceSettings(score_threshold=0.99), outputs,
                                          s3_endpoint=proxy.endpoint)
        assert summary["windows"]["read"] > 0
        outputs = {k: tmp_path / "foreign" / f"d.{k}" for k in OUTPUTS}
        with pytest.raises(InputError, match=r"s3://foreign-imagery/s/scene\.tif: not readable "
                                             r"without credentials .*not one the config names"):
            inference.predict_scene(foreign, weights, run_json, InferenceSettings(), outputs,
                                    s3_endpoint=proxy.endpoint)
    finally:
        proxy.stop()
    assert any(path.startswith("/named-imagery/") for path in proxy.signed)
    assert any(path.startswith("/foreign-imagery/") for _, path in proxy.seen)
    assert not [path for path in proxy.signed if path.startswith("/foreign-imagery/")]


def test_a_pre_signed_scene_url_is_used_whole_and_recorded_redacted(tiny_run, tmp_path,
                                                                     monkeypatch, caplog, capsys):
    """What the predict job does: its command line holds the redacted URL, the whole one comes
    from NADIR_URLS (set by the workflow from the config). The server gets the whole URL; the
    log, the summary and every output hold no part of its secret; without NADIR_URLS the
    job stops with an error saying why."""
    from nadir.storage.urls import publish, redact

    served = tmp_path / "served"
    served.mkdir()
    write_scene(served / "scene.tif", squares_scene(), driver="COG", blocksize=64)
    secret = "X-Amz-Signature=0ddba11c0ffee&token=tok-5ecre7"
    server = FileServer(served)
    url = f"{server.url}/scene.tif?{secret}"
    weights, run_json = tiny_run
    out = tmp_path / "out"
    def job():  # as the predict rules' scripts call them: the params hold the redacted URL
        inference.detect(weights, redact(url), "scene", False, {}, out / "windows.json",
                         out / "overview.png")
        return inference.write_outputs(out / "windows.json", out / "overview.png", run_json,
                                       0.3, {k: out / f"d.{k}" for k in OUTPUTS})

    monkeypatch.delenv("NADIR_URLS", raising=False)
    try:
        with pytest.raises(NadirError, match="recorded without its secret parts"):
            job()
        publish([url])
        with caplog.at_level(logging.INFO):
            job()
    finally:
        server.stop()
    assert any(secret in path for path, _ in server.requests)
    summary = json.loads((out / "d.summary").read_text())
    assert summary["source"] == redact(url) == f"{server.url}/scene.tif?redacted-" + \
        summary["source"].rsplit("-", 1)[1]
    texts = [caplog.text, capsys.readouterr().err] + [p.read_bytes().decode(errors="replace")
                                                        for p in out.iterdir()]
    for part in ("0ddba11c0ffee", "tok-5ecre7"):
        assert not [t for t in texts if part in t]
