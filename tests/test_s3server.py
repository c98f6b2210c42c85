"""The suite's SeaweedFS helper: the storage tests depend on it starting every time."""

from __future__ import annotations

import socket
from pathlib import Path

import s3server


def test_a_port_taken_before_weed_binds_it_gets_a_restart_on_other_ports(tmp_path,
                                                                         monkeypatch):
    picked: list[list[int]] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()

        def first_pick_has_a_taken_port(n: int) -> list[int]:
            ports = free_ports(n)
            if not picked:
                ports[s3server.PORT_FLAGS.index("filer.port")] = taken.getsockname()[1]
            picked.append(ports)
            return ports

        free_ports = s3server.free_ports
        monkeypatch.setattr(s3server, "free_ports", first_pick_has_a_taken_port)
        server = s3server.start(tmp_path)
        try:
            assert len(picked) == 2
            assert server.client().list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200
        finally:
            server.stop()


def test_ports_and_their_offsets_stay_below_the_ephemeral_range():
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = s3server.free_ports(len(s3server.PORT_FLAGS))
    assert len(set(ports)) == len(ports)
    assert all(1024 < p and p + s3server.PORT_OFFSET < ephemeral for p in ports), ports
