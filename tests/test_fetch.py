"""The fetch stage: resumable, retried, checksummed HTTP downloads from a local server; archives;
anonymous reads of a public bucket (SeaweedFS with an anonymous identity) for RarePlanes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import s3server
from dataset_builders import FileServer, index_tables, part_files, sha256, write_geotiff
from rasterio.warp import transform as warp

from nadir.core.errors import InputError, NadirError
from nadir.fetch import fetch_dataset
from nadir.fetch.sources import SourceEntry, fetch_s3
from nadir.index.normalise import index_dataset
from nadir.storage.download import FetchSettings, download


def settings(tmp_path, retries=2):
    return FetchSettings(tmp_path / "cache", retries, 5.0)


def test_download_resumes_after_a_dropped_connection_and_verifies(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    payload = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (root / "data.bin").write_bytes(payload)
    server = FileServer(root, drop_after=100_000)
    try:
        dest = tmp_path / "cache" / "data.bin"
        digest = sha256(root / "data.bin")
        download(f"{server.url}/data.bin", dest, digest, settings(tmp_path))
        assert dest.read_bytes() == payload
        assert not part_files(dest)
        assert server.requests == [("/data.bin", None), ("/data.bin", "bytes=100000-")]
    finally:
        server.stop()


def test_partial_download_never_looks_complete_and_a_bad_checksum_stops(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(b"x" * 50_000)
    server = FileServer(root, drop_after=10_000)
    try:
        dest = tmp_path / "cache" / "data.bin"
        with pytest.raises(NadirError, match="still failing after 1 attempt"):
            download(f"{server.url}/data.bin", dest, None, settings(tmp_path, retries=0))
        assert not dest.exists()
        assert [p.stat().st_size for p in part_files(dest)] == [10_000]
        with pytest.raises(InputError, match="SHA-256 mismatch"):
            download(f"{server.url}/data.bin", dest, "0" * 64, settings(tmp_path, retries=0))
        assert not dest.exists() and not part_files(dest)
        with pytest.raises(NadirError, match="HTTP 404.*not retried"):
            download(f"{server.url}/missing.zip", tmp_path / "m.zip", None, settings(tmp_path))
        assert server.requests[-1] == ("/missing.zip", None)
        assert sum(1 for p, _ in server.requests if p == "/missing.zip") == 1
    finally:
        server.stop()


def test_http_source_of_a_tar_gz_is_downloaded_checked_and_extracted(tmp_path):
    import tarfile

    root = tmp_path / "www"
    (root / "x" / "images").mkdir(parents=True)
    write_geotiff(root / "x" / "images" / "7.tif", np.zeros((32, 32, 3), np.uint8))
    (root / "x" / "labels.geojson").write_text('{"features": []}')
    with tarfile.open(root / "xview.tar.gz", "w:gz") as tf:
        tf.add(root / "x", arcname="x")
    server = FileServer(root)
    try:
        spec = {"format": "xview", "source": [
            {"url": f"{server.url}/xview.tar.gz", "sha256": sha256(root / "xview.tar.gz")}]}
        manifest = fetch_dataset("xv", spec, tmp_path / "files", settings(tmp_path))
        assert [s["image"] for s in manifest["scenes"]] == ["00-all/xview/x/images/7.tif"]
        assert manifest["label_files"] == ["00-all/xview/x/labels.geojson"]
        assert manifest["sources"][0]["sha256"] == spec["source"][0]["sha256"]
        assert manifest["scenes"][0]["width"] == 32
    finally:
        server.stop()


@pytest.fixture(scope="module")
def public_s3(tmp_path_factory):
    """A SeaweedFS server whose bucket `public` anyone may read and list, as rareplanes-public."""
    server = s3server.start(tmp_path_factory.mktemp("weed-public"),
                            anonymous_actions=["Read:public", "List:public"])
    yield server
    server.stop()


def _rareplanes_bucket(server, tmp_path) -> dict:
    """Three georeferenced tiles in train, one in test, RarePlanes' folder names."""
    client = server.client()
    client.create_bucket(Bucket="public")
    client.create_bucket(Bucket="private")
    roles = {}
    for split, tiles in (("train", ["t1", "t2", "t3"]), ("test", ["t9"])):
        for i, tile in enumerate(tiles):
            tif = tmp_path / f"{tile}.tif"
            transform = write_geotiff(tif, np.full((64, 64, 3), 90, np.uint8),
                                      origin=(600_000.0 + 100 * i, 4_000_000.0), gsd=0.3)
            ring = [transform @ p for p in [(5, 5), (25, 5), (25, 20), (5, 20)]]
            lons, lats = warp("EPSG:32633", "EPSG:4326", *map(list, zip(*ring, strict=True)))
            role = ["Small Civil Transport/Utility", "Military Fighter/Interceptor/Attack"][i % 2]
            roles[tile] = role
            coords = [[a, b] for a, b in zip(lons, lats, strict=True)]
            geojson = {"type": "FeatureCollection", "features": [{
                "type": "Feature", "properties": {"role": role, "num_engines": 1 + i},
                "geometry": {"type": "Polygon", "coordinates": [coords + coords[:1]]}}]}
            client.upload_file(str(tif), "public", f"real/{split}/PS-RGB_tiled/{tile}.tif")
            client.put_object(Bucket="public", Key=f"real/{split}/geojson_aircraft_tiled/"
                              f"{tile}.geojson", Body=json.dumps(geojson).encode())
            client.put_object(Bucket="public", Key=f"real/{split}/PS-RGB/{tile}_full.tif",
                              Body=b"not wanted when tiled")
    client.put_object(Bucket="private", Key="real/train/PS-RGB_tiled/p.tif", Body=b"x")
    return roles


def test_rareplanes_from_an_anonymous_public_bucket_with_a_subset(public_s3, tmp_path):
    roles = _rareplanes_bucket(public_s3, tmp_path)
    endpoint = public_s3.endpoint
    spec = {"format": "rareplanes", "tiled": True, "class_attribute": "role",
            "version": None, "source": [
                {"url": "s3://public/real/train/", "split": "train", "max_scenes": 2,
                 "endpoint_url": endpoint},
                {"url": "s3://public/real/test/", "split": "val", "endpoint_url": endpoint}],
            "split": {"method": "official", "val_fraction": 0.2, "seed": 0},
            "classes": {"merge": {}, "keep": None, "min_size": 0}, "on_bad_input": {}}
    files = tmp_path / "files"
    manifest = fetch_dataset("rp", spec, files, settings(tmp_path))
    assert [(s["scene"], s["split"]) for s in manifest["scenes"]] == [
        ("t1", "train"), ("t2", "train"), ("t9", "val")]
    assert [s["objects"] for s in manifest["sources"]] == [4, 2]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    summary = index_dataset(tmp_path / "m.json", files, spec,
                            index_tables(tmp_path / "out"))
    assert [c["name"] for c in summary["categories"]] == sorted({roles[t] for t in
                                                                  ("t1", "t2", "t9")})
    rows = (tmp_path / "out" / "annotations.csv").read_text().splitlines()[1:]
    first = rows[0].split(",")
    assert first[0] == "t1"
    assert [float(v) for v in first[4].split()] == pytest.approx(
        [5, 5, 25, 5, 25, 20, 5, 20], abs=1e-3)
    private = SourceEntry("s3://private/real/train/", "train", endpoint_url=endpoint)
    with pytest.raises(NadirError, match="AccessDenied.*anonymous: true"):
        fetch_s3(private, tmp_path / "p", lambda key: "image", settings(tmp_path, retries=0))


def test_private_bucket_with_credentials_from_the_environment(public_s3, tmp_path, monkeypatch):
    client = public_s3.client()
    client.create_bucket(Bucket="team")
    client.put_object(Bucket="team", Key="xview/labels/xView_train.geojson", Body=b"{}")
    client.put_object(Bucket="team", Key="xview/readme.md", Body=b"not wanted")
    for key, value in public_s3.env().items():
        monkeypatch.setenv(key, value)
    entry = SourceEntry("s3://team/xview/", endpoint_url=public_s3.endpoint, anonymous=False)
    got = fetch_s3(entry, tmp_path / "d", lambda rel: "label" if rel.endswith(".geojson")
                   else None, settings(tmp_path))
    assert got == ["xview/labels/xView_train.geojson"]
    assert (tmp_path / "d" / "labels" / "xView_train.geojson").read_bytes() == b"{}"
    anonymous = SourceEntry("s3://team/xview/", endpoint_url=public_s3.endpoint)
    with pytest.raises(NadirError, match="AccessDenied"):
        fetch_s3(anonymous, tmp_path / "e", lambda rel: "label", settings(tmp_path, retries=0))


@pytest.mark.parametrize("if_range", [True, False], ids=["if-range-honoured", "if-range-ignored"])
@pytest.mark.parametrize("new_size", [1_500, 500], ids=["grew", "shrank"])
def test_a_file_changed_between_attempts_is_downloaded_again_never_spliced(tmp_path, if_range,
                                                                           new_size):
    """400 bytes of the old version in the `.part`, then the server's file changes: the result
    is the new version whole, whether the server honours If-Range (200) or ignores it (a 206 of
    the new version, or a 416 when the new one is shorter than the part)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.bin").write_bytes(b"o" * 1_000)
    server = FileServer(root, drop_after=400, if_range=if_range)
    try:
        dest = tmp_path / "cache" / "f.bin"
        with pytest.raises(NadirError, match="connection closed after 400 of 1000 bytes"):
            download(f"{server.url}/f.bin", dest, None, settings(tmp_path, retries=0))
        new = bytes(range(256)) * 6
        (root / "f.bin").write_bytes(new[:new_size])
        download(f"{server.url}/f.bin", dest, None, settings(tmp_path, retries=1))
        assert dest.read_bytes() == new[:new_size]
        assert not list(dest.parent.glob("*.part*"))
    finally:
        server.stop()


def test_a_part_of_unknown_version_is_not_resumed(tmp_path):
    """A `.part` without the record of its version (from an older nadir, or a crash) is
    downloaded again from byte 0 rather than trusted."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.bin").write_bytes(b"n" * 1_000)
    dest = tmp_path / "cache" / "f.bin"
    dest.parent.mkdir(parents=True)
    dest.with_name("f.bin.part").write_bytes(b"o" * 1_000)
    server = FileServer(root)
    try:
        download(f"{server.url}/f.bin", dest, None, settings(tmp_path, retries=0))
        assert dest.read_bytes() == b"n" * 1_000
        assert server.requests == [("/f.bin", None)]
    finally:
        server.stop()


@pytest.fixture
def proxied_s3(public_s3):
    """The public SeaweedFS server behind a proxy that injects faults."""
    from s3proxy import FaultProxy

    proxy = FaultProxy(public_s3.endpoint)
    yield proxy
    proxy.stop()


def _bucket_with(server, bucket: str, objects: dict[str, bytes]) -> None:
    client = server.client()
    if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=bucket)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def test_s3_transfer_that_gives_up_is_a_clear_error_without_multiplied_attempts(
        public_s3, proxied_s3, tmp_path):
    """Every object body cut mid-stream: boto3 raises RetriesExceededError, which must become
    a NadirError, after retries + 1 GETs in all (no nadir loop on top of botocore's)."""
    _bucket_with(public_s3, "public", {"cut/a.tif": b"x" * 5_000})
    proxied_s3.faults = [("GET", "/public/cut/a.tif", "cut")] * 20
    entry = SourceEntry("s3://public/cut/", endpoint_url=proxied_s3.endpoint)
    lists = proxied_s3.count("GET")
    with pytest.raises(NadirError, match="download of s3://public/cut/a.tif: .*gave up"):
        fetch_s3(entry, tmp_path / "d", lambda rel: "image", settings(tmp_path, retries=1))
    assert proxied_s3.count("GET") - lists == 1 + 2  # the listing, then 2 attempts
    assert not (tmp_path / "d" / "a.tif").exists()


def test_s3_sources_go_through_the_cache_and_refetch_only_changed_objects(
        public_s3, proxied_s3, tmp_path):
    _bucket_with(public_s3, "public", {"cached/a.tif": b"a" * 100, "cached/b.tif": b"b" * 100})
    entry = SourceEntry("s3://public/cached/", endpoint_url=proxied_s3.endpoint)

    def gets_of_objects(dest):
        before = len(proxied_s3.seen)
        fetch_s3(entry, tmp_path / dest, lambda rel: "image", settings(tmp_path))
        return sorted(p for m, p in proxied_s3.seen[before:] if m == "GET" and "list" not in p)

    assert gets_of_objects("first") == ["/public/cached/a.tif", "/public/cached/b.tif"]
    assert gets_of_objects("second") == []
    assert (tmp_path / "second" / "b.tif").read_bytes() == b"b" * 100
    _bucket_with(public_s3, "public", {"cached/b.tif": b"B" * 100})
    assert gets_of_objects("third") == ["/public/cached/b.tif"]
    assert (tmp_path / "third" / "b.tif").read_bytes() == b"B" * 100
    assert (tmp_path / "second" / "b.tif").read_bytes() == b"b" * 100
