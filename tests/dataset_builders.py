"""Small datasets in the exact on-disk formats of DOTA, xView and RarePlanes, made by the tests,
and a local HTTP server (Range, If-Range, and injected faults) to fetch them."""

from __future__ import annotations

import hashlib
import json
import os
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

from nadir.datasets.sample import generate_scene

XVIEW_IDS = {"plane": 11, "storage-tank": 86, "small-vehicle": 18}


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
from nadir.fetch import FetchSettings, download
from nadir.training.weights import fetch_weights
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
