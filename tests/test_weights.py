"""Pretrained weights: fetched over HTTP once, checksum verified, a clear error without network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dataset_builders import FileServer

from nadir.config.catalogue import weight_files
from nadir.core.errors import NadirError
from nadir.storage.download import ChecksumError, FetchSettings
from nadir.train.weights import fetch_weights, verify_recorded

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving a weights file the test made."""
    served = tmp_path / "served"
    served.mkdir()
    payload = os.urandom(300_000)
    (served / "weights.pth").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _quiet(handler))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", payload
    httpd.shutdown()


def _quiet(handler):
    class Quiet(handler.func):
        def log_message(self, *args):
            pass
    return functools.partial(Quiet, *handler.args, **handler.keywords)


def test_fetch_verifies_a_full_digest_and_records_it(server, tmp_path):
    url, payload = server
    digest = hashlib.sha256(payload).hexdigest()
    out = tmp_path / "weights" / "w.pth"
    record = fetch_weights(f"{url}/weights.pth", digest, out)
    assert out.read_bytes() == payload
    assert record == json.loads((tmp_path / "weights" / "w.pth.json").read_text())
    assert record["sha256"] == digest and record["verified"] and record["bytes"] == 300_000
    verify_recorded(out, digest[:8])  # torchvision's published prefix is accepted too


def test_wrong_checksum_leaves_no_file(server, tmp_path):
    url, _ = server
    out = tmp_path / "w.pth"
    with pytest.raises(ChecksumError, match="SHA-256 mismatch .* expected 00000000"):
        fetch_weights(f"{url}/weights.pth", "00000000", out)
    assert not out.exists() and not list(tmp_path.glob("w.pth*"))


def test_unpublished_checksum_is_recorded_unverified(server, tmp_path):
    url, payload = server
    record = fetch_weights(f"{url}/weights.pth", None, tmp_path / "w.pth")
    assert record["verified"] is False
    assert record["sha256"] == hashlib.sha256(payload).hexdigest()


def test_no_network_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "w.pth"
    with pytest.raises(NadirError, match=r"cannot download pretrained weights: .*place it at "
                                         r".*pretrained: none"):
        fetch_weights(f"http://127.0.0.1:{port}/w.pth", "abc", out, FetchSettings(retries=0))
    assert not out.exists()


def test_a_truncated_download_is_retried_and_never_kept_short(tmp_path):
    """A server that announces 300,000 bytes and sends 1,000: the download is resumed, and
    while it stays short no weights file (nor its record) appears, checksum or not."""
    served = tmp_path / "served"
    served.mkdir()
    payload = os.urandom(300_000)
    (served / "w.pth").write_bytes(payload)
    server = FileServer(served, drop_after=1_000, script=["drop"] * 3)
    try:
        out = tmp_path / "weights" / "w.pth"
        with pytest.raises(NadirError, match=r"cannot download pretrained weights: .*"
                                             r"connection closed after 3000 of 300000 bytes"):
            fetch_weights(f"{server.url}/w.pth", None, out, FetchSettings(retries=2))
        assert not out.exists() and not (tmp_path / "weights" / "w.pth.json").exists()
        record = fetch_weights(f"{server.url}/w.pth", None, out, FetchSettings(retries=0))
        assert out.read_bytes() == payload and record["bytes"] == 300_000
        assert server.requests[-1] == ("/w.pth", "bytes=3000-")
    finally:
        server.stop()


def test_cli_fetches_a_catalogue_file_from_a_mirror_and_checks_it(server, tmp_path):
    url, _ = server
    name = "resnet18-f37072fd.pth"
    assert name in weight_files()
    proc = subprocess.run(
        [sys.executable, "-m", "nadir", "fetch-weights", "--file", name,
         "--url", f"{url}/weights.pth", "--out", str(tmp_path / name)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    # The served bytes are not torchvision's ResNet-18: the catalogue checksum rejects them.
    assert proc.returncode == 1
    assert "SHA-256 mismatch" in proc.stderr and "expected f37072fd" in proc.stderr
    assert "Traceback" not in proc.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "nadir", "fetch-weights", "--file", "nope.pth", "--out", "x"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert unknown.returncode == 1 and "not a weights file of the catalogue" in unknown.stderr
