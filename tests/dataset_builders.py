"""Small datasets in the exact on-disk formats of DOTA, xView and RarePlanes, made by the tests,
and a local HTTP server (Range, If-Range, and injected faults) to fetch them."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import ssl
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import yaml

from nadir.datasets.sample import generate_scene
from nadir.datasets.tables import (
    ANNOTATION_FIELDS,
    IndexTables,
    format_polygon,
    write_categories,
    write_scene_table,
)

XVIEW_IDS = {"plane": 11, "storage-tank": 86, "small-vehicle": 18}
DATASETS_DOC = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def index_tables(folder: Path) -> IndexTables:
    """The index's four files under their usual names in one folder."""
    return IndexTables(folder / "scenes.csv", folder / "annotations.csv",
                       folder / "categories.json", folder / "summary.json")


def write_index_tables(folder: Path, scenes: list[dict], annotations: list, classes: list[str]):
    """The index's tables of the given scenes and annotations (nadir.datasets.tables.Annotation)
    in `folder`, as the index writes them."""
    tables = index_tables(folder)
    tables.make_folders()
    write_scene_table(tables.scenes, scenes)
    with open(tables.annotations, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ANNOTATION_FIELDS)
        writer.writerows([a.scene, a.object, a.category, a.difficult,
                          format_polygon(a.polygon)] for a in annotations)
    write_categories(tables.categories, classes)
    return tables


def docs_datasets() -> dict[str, dict]:
    """Every dataset the YAML snippets of docs/datasets.md configure, by name: what the tests
    run, so that the docs and the tests cannot drift."""
    found = {}
    for block in re.findall(r"```yaml\n(.*?)```", DATASETS_DOC.read_text(), re.S):
        snippet = yaml.safe_load(block)
        if isinstance(snippet, dict) and "datasets" in snippet:
            found.update(snippet["datasets"])
    return found


def as_placed(snippet: dict, data: Path, endpoint: str | None = None) -> dict:
    """A docs snippet's dataset with `/data/` moved to the test's `data` folder and its s3://
    entries pointed at the tests' server (`endpoint`): nothing else changes."""
    spec = json.loads(json.dumps(snippet))
    for entry in spec["source"]:
        if entry["url"].startswith("/data/"):
            entry["url"] = str(data / entry["url"][len("/data/"):])
        elif entry["url"].startswith("s3://"):
            entry["endpoint_url"] = endpoint
    return spec


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def part_files(dest: Path) -> list[Path]:
    """The part files a download of `dest` left (`<name>.part-<process>`, without their
    version records)."""
    return sorted(p for p in dest.parent.glob(dest.name + ".part*")
                  if not p.name.endswith(".json"))


def write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_geotiff(path: Path, pixels: np.ndarray, crs: str = "EPSG:32633",
                  origin: tuple[float, float] = (500_000.0, 5_000_000.0), gsd: float = 0.5):
    """An RGB GeoTIFF; returns its affine geotransform."""
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    transform = from_origin(*origin, gsd, gsd)
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[1], height=pixels.shape[0],
                       count=3, dtype="uint8", crs=crs, transform=transform) as dst:
        dst.write(pixels.transpose(2, 0, 1))
    return transform


def scene(seed: int, size: int, objects: int) -> tuple[np.ndarray, list]:
    image, objs, _ = generate_scene(np.random.default_rng(seed), size, objects)
    return np.asarray(image), objs


def dota_label_text(objs: list, header: bool = True, difficult: bool = True) -> str:
    lines = ["imagesource:GoogleEarth", "gsd:0.5"] if header else []
    for n, (category, polygon) in enumerate(objs):
        coords = " ".join(f"{v:.1f}" for v in np.asarray(polygon).reshape(-1))
        lines.append(f"{coords} {category}" + (f" {n % 2}" if difficult else ""))
    return "\n".join(lines) + "\n"


def make_dota(root: Path, train: int = 3, val: int = 2, size: int = 320) -> dict[str, Path]:
    """DOTA layout: a train zip (images/ + labelTxt/, labels without header and difficult flag
    on odd scenes) and a val folder; returns {split: path}."""
    folders = {}
    for split, count, offset in (("train", train, 0), ("val", val, 100)):
        folder = root / f"dota-{split}"
        for i in range(count):
            name = f"P{offset + i:04d}"
            pixels, objs = scene(offset + i, size, 8)
            write_png(folder / "images" / f"{name}.png", pixels)
            label = folder / "labelTxt-v1.5" / f"{name}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(dota_label_text(objs, header=i % 2 == 0, difficult=i % 2 == 0))
        folders[split] = folder
    archive = root / "dota-train.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folders["train"].rglob("*")):
            zf.write(path, path.relative_to(folders["train"]).as_posix())
    return {"train": archive, "val": folders["val"]}


def xview_feature(image: str, type_id, bounds: str) -> dict:
    return {"type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [0, 1], [1, 1], [0, 0]]]},
            "properties": {"bounds_imcoords": bounds, "type_id": type_id, "image_id": image,
                           "edited_by": "test", "cat_id": 1}}


def make_xview(root: Path, images: int = 4, size: int = 320) -> dict:
    """xView as its download page serves it (docs/datasets.md, xView): `train_images.tgz`
    (`train_images/<id>.tif`, GeoTIFFs), `train_labels.tgz` (`xView_train.geojson` at its top)
    and `val_images.tgz` (`val_images/<id>.tif`, no labels). The labels hold unnamed ids 75/82,
    a box in each of the three empty forms (missing, "" and []), a degenerate box and features
    of an image the archive lacks. The unpacked geojson is in `root/unpacked/`."""
    unpacked = root / "unpacked"
    image_dir = unpacked / "train_images"
    features = []
    for i in range(images):
        name = f"{1000 + i}.tif"
        pixels, objs = scene(200 + i, size, 8)
        write_geotiff(image_dir / name, pixels, origin=(500_000.0 + 1000 * i, 5_000_000.0))
        for category, polygon in objs:
            xy = np.asarray(polygon)
            bounds = ",".join(str(int(round(v))) for v in (*xy.min(axis=0), *xy.max(axis=0)))
            features.append(xview_feature(name, XVIEW_IDS[category], bounds))
    first = "1000.tif"
    no_box = xview_feature(first, 73, "")
    del no_box["properties"]["bounds_imcoords"]
    features += [xview_feature(first, 75, "1,1,20,20"), xview_feature(first, 82, "1,1,20,20"),
                 xview_feature(first, 73, ""), xview_feature(first, 73, []), no_box,
                 xview_feature(first, 73, "30,30,30,40"),
                 xview_feature("9999.tif", 18, "1,1,20,20")]
    labels = unpacked / "xView_train.geojson"
    labels.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    write_geotiff(unpacked / "val_images" / "2000.tif", scene(300, size, 0)[0])
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "train_images.tgz", "w:gz") as tf:
        tf.add(image_dir, arcname="train_images")
    with tarfile.open(root / "train_labels.tgz", "w:gz") as tf:
        tf.add(labels, arcname="xView_train.geojson")
    with tarfile.open(root / "val_images.tgz", "w:gz") as tf:
        tf.add(unpacked / "val_images", arcname="val_images")
    return {"images": root / "train_images.tgz", "label_archive": root / "train_labels.tgz",
            "labels": labels, "val_images": root / "val_images.tgz",
            "features": len(features), "objects": len(features) - 7}


# --- DOTA as its Google Drive folders hold it (docs/datasets.md, DOTA, cites the layout) -----

DOTA_GSD_HEADER = "imagesource:GoogleEarth\ngsd:{gsd}\n"
# scene: (split, the part archive of its images)
DOTA_SCENES = {"P0000": ("train", "part1"), "P0001": ("train", "part1"),
               "P0002": ("train", "part2"), "P0005": ("train", "part3"),
               "P0003": ("val", "part1"), "P0004": ("val", "part1")}


def quad(cx: float, cy: float, w: float, h: float, degrees: float) -> list[float]:
    """The four corners of a rotated rectangle, clockwise, rounded as DOTA writes them."""
    t = np.radians(degrees)
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return [round(v, 1) for x, y in corners
            for v in (cx + x * np.cos(t) - y * np.sin(t), cy + x * np.sin(t) + y * np.cos(t))]


def dota_objects(scene_name: str) -> list[tuple[str, list[float], int]]:
    """(class, polygon, difficult) of a replica scene: small objects everywhere, a
    container-crane (v1.5 only) in P0001 and P0003, and a ground-track-field longer than 256
    px in P0000 and P0004 (kept whole by 1,024 px chips, by no 128 px chip)."""
    k = int(scene_name[1:])
    objects = [("plane", quad(60 + 5 * k, 60, 40, 30, 30), 0),
               ("small-vehicle", quad(250, 40 + 3 * k, 12, 6, 0), k % 2),
               ("ship", quad(40, 270, 30, 10, 60), 0)]
    if scene_name in ("P0001", "P0003"):
        objects.append(("container-crane", quad(200, 200, 40, 12, 15), 0))
    if scene_name in ("P0000", "P0004"):
        objects.append(("ground-track-field", quad(160, 160, 270, 140, 0), 0))
    return objects


def _hbb(polygon: list[float]) -> list[float]:
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), max(xs), min(ys), max(xs), max(ys), min(xs), max(ys)]


def dota_label(scene_name: str, version: str, horizontal: bool = False) -> str:
    """A label file as DOTA writes it: `imagesource`/`gsd` header (gsd null on odd scenes),
    then `x1 y1 ... x4 y4 class difficult`; v1.0's lacks container-crane."""
    k = int(scene_name[1:])
    lines = [DOTA_GSD_HEADER.format(gsd="null" if k % 2 else "0.146343590398").strip()]
    for category, polygon, difficult in dota_objects(scene_name):
        if category == "container-crane" and version == "v1.0":
            continue
        coords = _hbb(polygon) if horizontal else polygon
        lines.append(" ".join(f"{v:.1f}" for v in coords) + f" {category} {difficult}")
    return "\n".join(lines) + "\n"


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def png_bytes(pixels: np.ndarray) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def make_dota_drive(root: Path, size: int = 320) -> dict:
    """DOTA's Drive folders in miniature under `root` (the folder the user downloaded, e.g.
    /data/DOTA): `train/images/part1.zip`..`part3.zip` (members `images/P0000.png`) and the copy
    `train/images/1/part1.zip`; `train/labelTxt-v1.0/labelTxt.zip` (label files at its top) and
    `Train_Task2_gt.zip` (`trainset_reclabelTxt/`); `train/labelTxt-v1.5/DOTA-v1.5_train.zip`
    and `DOTA-v1.5_train_hbb.zip`; `val/` likewise with one part and `Val_Task2_gt.zip`
    (`valset_reclabelTxt/`). Returns the objects per scene and split."""
    parts: dict[tuple[str, str], dict[str, bytes]] = {}
    for i, (name, (split, part)) in enumerate(sorted(DOTA_SCENES.items())):
        pixels = np.full((size, size, 3), 80 + 10 * i, np.uint8)
        pixels[::7, :, 1] = 120  # stripes, so chips are not flat
        parts.setdefault((split, part), {})[f"images/{name}.png"] = png_bytes(pixels)
    for (split, part), members in parts.items():
        write_zip(root / split / "images" / f"{part}.zip", members)
    (root / "train" / "images" / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "train" / "images" / "part1.zip",
                root / "train" / "images" / "1" / "part1.zip")
    for split, task2 in (("train", "Train_Task2_gt"), ("val", "Val_Task2_gt")):
        names = sorted(n for n, (s, _) in DOTA_SCENES.items() if s == split)
        write_zip(root / split / "labelTxt-v1.0" / "labelTxt.zip",
                  {f"{n}.txt": dota_label(n, "v1.0").encode() for n in names})
        write_zip(root / split / "labelTxt-v1.0" / f"{task2}.zip",
                  {f"{split}set_reclabelTxt/{n}.txt": dota_label(n, "v1.0", True).encode()
                   for n in names})
        for suffix, horizontal in (("", False), ("_hbb", True)):
            write_zip(root / split / "labelTxt-v1.5" / f"DOTA-v1.5_{split}{suffix}.zip",
                      {f"{n}.txt": dota_label(n, "v1.5", horizontal).encode() for n in names})
    return {"root": root,
            "objects": {n: dota_objects(n) for n in DOTA_SCENES},
            "split": {n: split for n, (split, _) in DOTA_SCENES.items()}}


# --- RarePlanes' public bucket (docs/datasets.md, RarePlanes, cites the layout) ---------------

ROLES = {1: "Small Civil Transport/Utility", 3: "Large Civil Transport/Utility",
         6: "Military Fighter/Interceptor/Attack", 7: "Military Trainer"}
# tile: (split, ((role_id, diamond centre x, y, length, span), ...)), 64 px tiles
RAREPLANES_TILES = {
    "31_10400100443CFD00_tile_817": ("train", ((1, 20, 20, 14, 12), (6, 45, 40, 16, 10))),
    "31_10400100443CFD00_tile_818": ("train", ((3, 32, 30, 30, 28),)),
    "105_104001003108D900_tile_47": ("train", ((1, 15, 48, 10, 10),)),
    "106_104001003D8DB300_tile_99": ("test", ((7, 30, 30, 12, 16),)),
    "128_104001004215BF00_tile_1888": ("test", ((1, 12, 12, 10, 8), (3, 40, 44, 24, 22))),
}
TILE_SIZE = 64
TILE_GSD_DEGREES = 2.7e-6  # about 0.3 m


def diamond(cx: float, cy: float, length: float, span: float) -> list[tuple[float, float]]:
    """RarePlanes' outline of an aircraft in pixels: nose, left wing tip, tail, right wing."""
    return [(cx, cy - length / 2), (cx - span / 2, cy), (cx, cy + length / 2),
            (cx + span / 2, cy)]


def write_pam_png(path: Path, pixels: np.ndarray, transform, crs: str) -> None:
    """A PNG as gdal_translate writes one from a GeoTIFF: the pixels, and the georeferencing
    in GDAL's PAM sidecar `<path>.aux.xml` beside it (GDAL itself writes both)."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as gdal_copy

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": pixels.shape[1], "height": pixels.shape[0],
               "count": 3, "dtype": "uint8", "crs": crs, "transform": transform}
    with MemoryFile() as memory, rasterio.Env(GDAL_PAM_ENABLED="YES"):
        with memory.open(**profile) as source:
            source.write(pixels.transpose(2, 0, 1))
        with memory.open() as source:
            gdal_copy(source, str(path), driver="PNG")


def make_rareplanes(bucket: Path) -> dict:
    """The real part of s3://rareplanes-public in miniature under `bucket`: per split
    `real/<split>/PS-RGB_tiled/<image>_tile_<n>.png` with its `.png.aux.xml`,
    `real/<split>/geojson_aircraft_tiled/<image>_tile_<n>.geojson` (WGS 84 diamonds with role,
    role_id and the other attributes), the untiled `PS-RGB/` and `geojson_aircraft/`, and the
    tarballs `real/tarballs/<split>/RarePlanes_<split>_PS-RGB_tiled.tar.gz` (`PS-RGB_tiled/`)
    and `..._geojson_aircraft_tiled.tar.gz` (`geojson_aircraft_tiled/`). Returns per tile its
    split, transform and objects (role, role_id, pixel polygon)."""
    from rasterio.transform import from_origin

    tiles = {}
    for i, (tile, (split, planes)) in enumerate(sorted(RAREPLANES_TILES.items())):
        transform = from_origin(-80.15 + 0.001 * i, 26.07, TILE_GSD_DEGREES, TILE_GSD_DEGREES)
        pixels = np.full((TILE_SIZE, TILE_SIZE, 3), 90 + 20 * i, np.uint8)
        pixels[::5, :, 0] = 200
        write_pam_png(bucket / "real" / split / "PS-RGB_tiled" / f"{tile}.png", pixels,
                      transform, "EPSG:4326")
        features, objects = [], []
        for role_id, cx, cy, length, span in planes:
            ring = diamond(cx, cy, length, span)
            lonlat = [list(transform @ p) for p in ring]
            features.append({"type": "Feature", "properties": {
                "image_id": tile.rsplit("_tile_", 1)[0], "role": ROLES[role_id],
                "role_id": role_id, "num_engines": 2, "propulsion": "jet", "canards": "no",
                "num_tail_fins": 1, "wing_position": "mid/low mounted",
                "wing_type": "swept", "faa_wingspan_class": 3, "area": 240.5,
                "partialDec": 1.0},
                "geometry": {"type": "Polygon", "coordinates": [lonlat + lonlat[:1]]}})
            objects.append((ROLES[role_id], role_id, [v for p in ring for v in p]))
        label = bucket / "real" / split / "geojson_aircraft_tiled" / f"{tile}.geojson"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(json.dumps({"type": "FeatureCollection", "name": tile, "crs": {
            "type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}},
            "features": features}))
        scene_id = tile.rsplit("_tile_", 1)[0]
        write_geotiff(bucket / "real" / split / "PS-RGB" / f"{scene_id}.tif", pixels,
                      crs="EPSG:4326", origin=(transform.c, transform.f), gsd=TILE_GSD_DEGREES)
        (bucket / "real" / split / "geojson_aircraft").mkdir(parents=True, exist_ok=True)
        (bucket / "real" / split / "geojson_aircraft" / f"{scene_id}.geojson").write_text(
            label.read_text())
        tiles[tile] = {"split": split, "transform": transform, "objects": objects}
    for split in ("train", "test"):
        for folder in ("PS-RGB_tiled", "geojson_aircraft_tiled"):
            archive = (bucket / "real" / "tarballs" / split /
                       f"RarePlanes_{split}_{folder}.tar.gz")
            archive.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive, "w:gz") as tf:
                tf.add(bucket / "real" / split / folder, arcname=folder)
    return tiles


def upload_tree(client, bucket: str, root: Path) -> None:
    """Every file under `root` as an object of `bucket`, keyed by its relative path."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, path.relative_to(root).as_posix())


class FileServer:
    """Serves a folder on 127.0.0.1 as a CDN would: ETag and Last-Modified from the file, Range
    requests honoured only while `If-Range` still matches (or always, with `if_range=False`, as
    careless servers do), 416 with `Content-Range: bytes */N` past the end; a range's end
    (`bytes=START-END`) and HEAD are honoured, only the requested bytes are read, and the body
    bytes sent are counted (`bytes_served`), so a test can tell a range reader from a download.

    Faults, for the tests: `drop_after` bytes cuts the first response of each file there (a
    dropped connection); `script` lists what to do with each request in turn: "ok", "drop"
    (cut after `drop_after` bytes), "stall" (send the headers, then nothing for `stall_s`) or
    an HTTP status to answer with. Each request is recorded as (path, Range header), the path
    with its query (which plays no part in finding the file, as with pre-signed URLs).
    Hostile answers: `redirects` maps paths to the Location of a 302; `announce(n)` gives the
    Content-Length sent for an n-byte body (None: no header, the body ends with the
    connection), so a server can announce more, or less, than it sends.
    """

    def __init__(self, root: Path, drop_after: int | None = None, script: tuple = (),
                 stall_s: float = 0.0, if_range: bool = True,
                 redirects: dict[str, str] | None = None,
                 announce: Callable[[int], int | None] = lambda n: n):
        self.root, self.drop_after, self.requests = root, drop_after, []
        self.script, self.stall_s, self.if_range = list(script), stall_s, if_range
        self.redirects, self.announce = redirects or {}, announce
        self.scripted = bool(script)
        self.dropped: set[str] = set()
        self.bytes_served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):  # noqa: N802 - http.server's naming
                path = server.root / self.path.partition("?")[0].lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):  # noqa: N802 - http.server's naming
                server.requests.append((self.path, self.headers.get("Range")))
                action = "ok"
                if server.script:
                    action = server.script.pop(0)
                elif server.drop_after and not server.scripted \
                        and self.path not in server.dropped:
                    server.dropped.add(self.path)
                    action = "drop"
                if isinstance(action, int):
                    self.send_error(action)
                    return
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = server.root / self.path.partition("?")[0].lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                stat = path.stat()
                size = stat.st_size
                version = f"{size}:{stat.st_mtime_ns}".encode()  # changes when the file does
                etag = '"' + hashlib.sha256(version).hexdigest()[:16] + '"'
                modified = formatdate(stat.st_mtime, usegmt=True)
                start, end = 0, size - 1
                wanted = self.headers.get("Range")
                if wanted and server.if_range and self.headers.get("If-Range") not in (
                        None, etag, modified):
                    wanted = None  # the file changed: the whole new version, with 200
                if wanted:
                    first, _, last = wanted.split("=")[1].partition("-")
                    start = int(first)
                    end = min(int(last), size - 1) if last.strip() else size - 1
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                with open(path, "rb") as fh:
                    fh.seek(start)
                    body = fh.read(end + 1 - start)
                server.bytes_served += len(body)
                announced = server.announce(len(body))
                if announced is not None:
                    self.send_header("Content-Length", str(announced))
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", modified)
                self.end_headers()
                if action == "stall":
                    time.sleep(server.stall_s)
                if action == "drop":
                    self.wfile.write(body[:server.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _zeros_deflated(size: int, crc: int = 0) -> tuple[bytes, int]:
    """A raw deflate stream of `size` zero bytes (a multiple of 1 MiB) and the CRC-32 of what
    came before (`crc`) and them, made from one compressed MiB repeated (each copy starts
    afresh: a full flush), so a bomb of hundreds of MB takes milliseconds to build."""
    block = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    for _ in range(size >> 20):
        crc = zlib.crc32(block, crc)
    return chunk * (size >> 20) + b"\x03\x00", crc  # then an empty final block


def zip_bomb(path: Path, size: int = 400 << 20, name: str = "bomb.bin") -> Path:
    """A zip of one deflated member of `size` zero bytes (400 MiB in about 0.4 MB)."""
    data, crc = _zeros_deflated(size)
    encoded = name.encode()
    header = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 8, 0, 0x21, crc, len(data),
                         size, len(encoded), 0) + encoded
    central = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 8, 0, 0x21, crc,
                          len(data), size, len(encoded), 0, 0, 0, 0, 0o100644 << 16, 0) + encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central),
                      len(header) + len(data), 0)
    path.write_bytes(header + data + central + end)
    return path


def tar_gz_bomb(path: Path, size: int = 400 << 20, name: str = "bomb.bin") -> Path:
    """A .tar.gz of one member of `size` zero bytes (400 MiB in about 0.4 MB): its header,
    then zeros (the body and the end-of-archive blocks), gzip-framed."""
    info = tarfile.TarInfo(name)
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros, crc = _zeros_deflated(size + (1 << 20), zlib.crc32(header))
    total = len(header) + size + (1 << 20)
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + zeros
                     + struct.pack("<2L", crc, total & 0xFFFFFFFF))
    return path


def self_signed(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, key and certificate in one file (trusted by a
    client through SSL_CERT_FILE)."""
    folder.mkdir(parents=True, exist_ok=True)
    pem, cert = folder / "localhost.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                    str(pem), "-out", str(cert)], check=True, capture_output=True)
    pem.write_text(pem.read_text() + cert.read_text())
    return pem


class Redirecting:
    """An https server on 127.0.0.1 that answers /final with `body` and anything else with a
    302 to `location` (changeable)."""

    def __init__(self, certificate: Path, location: str, body: bytes = b""):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                final = self.path == "/final"
                self.send_response(200 if final else 302)
                if not final:
                    self.send_header("Location", self.server.location)
                self.send_header("Content-Length", str(len(body) if final else 0))
                self.end_headers()
                if final:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.location = location
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


FETCH_IN_A_PROCESS = """
import sys
from pathlib import Path
from nadir.storage.download import FetchSettings, download
from nadir.train.weights import fetch_weights
url, dest, how = sys.argv[1:]
settings = FetchSettings(Path(dest).parent, 0, 20.0)
if how == "dataset":
    print(download(url, Path(dest), None, settings))
else:
    print(fetch_weights(url, None, Path(dest), settings)["sha256"])
"""


def fetch_in_two_processes(tmp_path: Path, how: str) -> tuple[list[str], int, list[str]]:
    """Two processes fetch one 2 MiB URL (`how`: as a dataset source or as pretrained weights)
    at the same moment from a server slow to answer. Returns the digests they print, how many
    requests the server got, and the files left in the cache folder."""
    root = tmp_path / "www"
    root.mkdir()
    payload = os.urandom(2 << 20)
    (root / "f.bin").write_bytes(payload)
    server = FileServer(root, script=["stall", "stall"], stall_s=2.0)
    dest = tmp_path / "cache" / "f.bin"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    try:
        processes = [subprocess.Popen([sys.executable, "-c", FETCH_IN_A_PROCESS,
                                       f"{server.url}/f.bin", str(dest), how], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
        results = [p.communicate(timeout=120) + (p.returncode,) for p in processes]
    finally:
        server.stop()
    assert [code for _, _, code in results] == [0, 0], results
    assert dest.read_bytes() == payload
    digests = [out.strip() for out, _, _ in results]
    assert digests[0] == hashlib.sha256(payload).hexdigest()
    return digests, len(server.requests), sorted(p.name for p in dest.parent.iterdir())
