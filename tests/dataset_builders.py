"""Small datasets in the exact on-disk formats of DOTA, xView and RarePlanes, made by the tests,
and a local HTTP server (Range, If-Range, and injected faults) to fetch them."""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
import time
import zipfile
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from nadir.datasets.sample import generate_scene

XVIEW_IDS = {"plane": 11, "storage-tank": 86, "small-vehicle": 18}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    image, objs = generate_scene(np.random.default_rng(seed), size, objects)
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
    """xView layout: train_images.tgz of GeoTIFFs and one xView_train.geojson, including
    unnamed ids 75/82, an empty and a degenerate box and features of an absent image."""
    image_dir = root / "train_images"
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
    features += [xview_feature(first, 75, "1,1,20,20"), xview_feature(first, 82, "1,1,20,20"),
                 xview_feature(first, 73, ""), xview_feature(first, 73, "30,30,30,40"),
                 xview_feature("9999.tif", 18, "1,1,20,20")]
    labels = root / "xView_train.geojson"
    labels.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    archive = root / "train_images.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(image_dir, arcname="train_images")
    return {"images": archive, "labels": labels, "features": len(features),
            "objects": len(features) - 5}


class FileServer:
    """Serves a folder on 127.0.0.1 as a CDN would: ETag and Last-Modified from the file, Range
    requests honoured only while `If-Range` still matches (or always, with `if_range=False`, as
    careless servers do), 416 with `Content-Range: bytes */N` past the end.

    Faults, for the tests: `drop_after` bytes cuts the first response of each file there (a
    dropped connection); `script` lists what to do with each request in turn: "ok", "drop"
    (cut after `drop_after` bytes), "stall" (send the headers, then nothing for `stall_s`) or
    an HTTP status to answer with. Each request is recorded as (path, Range header).
    """

    def __init__(self, root: Path, drop_after: int | None = None, script: tuple = (),
                 stall_s: float = 0.0, if_range: bool = True):
        self.root, self.drop_after, self.requests = root, drop_after, []
        self.script, self.stall_s, self.if_range = list(script), stall_s, if_range
        self.scripted = bool(script)
        self.dropped: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

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
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                modified = formatdate(path.stat().st_mtime, usegmt=True)
                start = 0
                wanted = self.headers.get("Range")
                if wanted and server.if_range and self.headers.get("If-Range") not in (
                        None, etag, modified):
                    wanted = None  # the file changed: the whole new version, with 200
                if wanted:
                    start = int(wanted.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
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
