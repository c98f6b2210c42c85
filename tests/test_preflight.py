"""A run that cannot work stops before its DAG is built, with one short message naming what to
set (nadir.storage.preflight): a profile's placeholders, missing S3 keys, an S3 endpoint that does
not answer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from conftest import ROOT

from nadir.storage.preflight import (
    KEY_VARIABLES,
    SettingsError,
    check_controller_start,
    endpoint_problem,
    placeholder_problems,
)


def test_placeholders_are_the_word_edit_in_a_value():
    settings = {"kubernetes-pods-namespace": "EDIT-your-namespace",
                "default-storage-prefix": "s3://EDIT-bucket/runs",
                "container-image": "registry.example.org/nadir:0.1.0-EDITED",
                "kubernetes-pods-cpu-image": None, "retries": 2}
    assert placeholder_problems(settings) == [
        "kubernetes-pods-namespace: still the profile's placeholder (EDIT-your-namespace)",
        "default-storage-prefix: still the profile's placeholder (s3://EDIT-bucket/runs)"]


@pytest.fixture
def refusing_server():
    """An HTTP server that refuses every request (as S3 refuses an unsigned one): it answers."""
    class Refuse(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.send_response(403)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def workflow(prefix: str, endpoint: str, keys: tuple[str | None, str | None]):
    """What the workflow sees of Snakemake's settings while it is read."""
    s3 = SimpleNamespace(endpoint_url=endpoint, access_key=keys[0], secret_key=keys[1])
    return SimpleNamespace(
        storage_settings=SimpleNamespace(default_storage_provider="s3",
                                         default_storage_prefix=prefix),
        storage_provider_settings={"s3": SimpleNamespace(get_settings=lambda: s3)})


def test_an_endpoint_answers_with_any_status_and_a_closed_one_does_not(refusing_server):
    assert endpoint_problem(refusing_server) is None
    closed = closed_port_url()
    assert endpoint_problem(closed).startswith(f"{closed} does not answer (")


def test_every_problem_is_named_in_one_message(refusing_server):
    check_controller_start(workflow("s3://bucket/runs", refusing_server, ("key", "secret")))
    closed = closed_port_url()
    with pytest.raises(SettingsError) as caught:
        check_controller_start(workflow("s3://EDIT-bucket/runs", closed, (None, None)))
    message = str(caught.value)
    assert "default-storage-prefix: still the profile's placeholder (s3://EDIT-bucket/runs)" \
        in message
    assert f"{' and '.join(KEY_VARIABLES)}: not in the environment" in message
    assert f"storage-s3-endpoint-url: {closed} does not answer" in message
    with pytest.raises(SettingsError, match="SNAKEMAKE_STORAGE_S3_SECRET_KEY: not in the"):
        check_controller_start(workflow("s3://bucket/runs", refusing_server, ("key", None)))


def test_the_unedited_nautilus_profile_stops_before_the_dag_naming_what_to_set(tmp_path):
    """`snakemake --workflow-profile profiles/nautilus -n` as a new user types it, before editing
    the profile and without S3 keys: one message (it was a 2,313-line exception group)."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--workflow-profile",
                           "profiles/nautilus", "-n"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "Building DAG" not in output and "Traceback" not in output
    assert len(output.splitlines()) <= 12, output
    for what in ("kubernetes-pods-namespace: still the profile's placeholder",
                 "kubernetes-pods-cpu-image: still the profile's placeholder",
                 "default-storage-prefix: still the profile's placeholder",
                 f"{' and '.join(KEY_VARIABLES)}: not in the environment",
                 "(the lines marked EDIT)"):
        assert what in output
