"""One controller per results location (nadir.storage.controller): a second one stops with a clear
message, a crashed one's record is taken over when it is known dead or when the user says so,
and a controller removes only its own record. On a local folder and on the real S3 server."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time

import pytest

from nadir.storage import controller
from nadir.storage.controller import (
    OWNER_FILE,
    ControllerLockError,
    Lease,
    LocalOwner,
    S3Owner,
    claim,
    owner_store,
    release,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalOwner(tmp_path)
    s3 = request.getfixturevalue("s3")
    return S3Owner(f"s3://owners/{tmp_path.name}", s3.endpoint, s3.access_key, s3.secret_key)


def foreign(**changes) -> bytes:
    owner = {"id": "0" * 32, "host": "gpu-login-2", "pid": 4242, "user": "alice",
             "workdir": "/home/alice/nadir", "started": "2026-12-07T09:00:00+00:00"}
    return json.dumps({**owner, **changes}).encode()


def test_a_second_controller_stops_and_the_first_releases(store):
    mine = claim(store, take_over=False)
    with pytest.raises(ControllerLockError, match=rf"another controller is running on these "
                                                  rf"results \(pid {mine['pid']} of .* on "
                                                  rf"{socket.gethostname()}.*NADIR_TAKE_OVER=1"):
        claim(store, take_over=False)
    release(store, mine)
    assert store.read() is None
    release(store, mine)  # nothing left to release: no error
    release(store, claim(store, take_over=False))


def test_a_crashed_controller_is_taken_over_only_when_known_gone_or_asked(store, caplog):
    store.create(foreign())  # another machine: nothing here can tell whether it still runs
    with pytest.raises(ControllerLockError, match=r"pid 4242 of alice on gpu-login-2, in "
                                                  r"/home/alice/nadir, since 2026-12-07"):
        claim(store, take_over=False)
    assert store.read() == foreign()
    with caplog.at_level(logging.WARNING, logger="nadir.storage.controller"):
        mine = claim(store, take_over=True)
    assert "taking over" in caplog.text and "gpu-login-2" in caplog.text
    release(store, json.loads(foreign()))  # the old owner ending late leaves the new record
    assert json.loads(store.read())["id"] == mine["id"]
    release(store, mine)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    store.create(foreign(host=socket.gethostname(), pid=int(dead)))  # this machine, exited
    with caplog.at_level(logging.WARNING, logger="nadir.storage.controller"):
        release(store, claim(store, take_over=False))
    assert "which no longer runs; taking it over" in caplog.text
    store.create(b"{not json")
    with pytest.raises(ControllerLockError, match="an unreadable owner record"):
        claim(store, take_over=False)


def test_a_lease_not_renewed_lapses_and_a_renewed_one_holds(store, monkeypatch, caplog):
    """A controller that crashed on another machine stops renewing its record: a new start
    takes it over once it has not been renewed for LEASE_EXPIRY_S (by the storage's clock),
    while one whose Lease renews it keeps it however long it runs."""
    monkeypatch.setattr(controller, "LEASE_EXPIRY_S", 2.0)
    store.create(foreign())  # a crashed controller of another machine: no one renews it
    with pytest.raises(ControllerLockError, match=r"renewed \d+ s ago.*lapses 2 s after"):
        claim(store, take_over=False)
    time.sleep(3.2)  # whole seconds: S3's Last-Modified has no finer resolution
    with caplog.at_level(logging.WARNING, logger="nadir.storage.controller"):
        mine = claim(store, take_over=False)
    assert "not renewed for" in caplog.text and "gpu-login-2" in caplog.text
    lease = Lease(store, mine, every_s=0.5)
    try:
        time.sleep(3.2)  # longer than the expiry: only the renewals keep the claim
        assert store.age_s() < 2.0
        with pytest.raises(ControllerLockError):
            claim(store, take_over=False)
    finally:
        release(store, mine, lease)
    assert store.read() is None and not lease._thread.is_alive()


def test_take_over_comes_from_the_environment(tmp_path, monkeypatch):
    store = LocalOwner(tmp_path)
    store.create(foreign())
    monkeypatch.setenv("NADIR_TAKE_OVER", "1")
    release(store, claim(store))
    assert not (tmp_path / OWNER_FILE).exists()


def test_where_the_record_lives(tmp_path):
    assert owner_store(None, folder=tmp_path).describe() == str(tmp_path.resolve() / OWNER_FILE)
    assert owner_store("s3://bucket/runs/a/", "http://x").describe() == \
        f"s3://bucket/runs/a/{OWNER_FILE}"
    assert owner_store("s3://bucket", None).describe() == f"s3://bucket/{OWNER_FILE}"


def test_of_two_controllers_starting_at_once_one_goes_on(store, monkeypatch):
    """The other controller's record appears between this one's look and its write: the
    conditional write (S3 `If-None-Match: *`, a local exclusive create) refuses."""
    store.create(foreign())
    real_read = store.read
    looks = []

    def read_too_early():
        looks.append(1)
        return None if len(looks) == 1 else real_read()

    monkeypatch.setattr(store, "read", read_too_early)
    with pytest.raises(ControllerLockError, match="claimed .* at the same moment"):
        claim(store, take_over=False)
    assert real_read() == foreign()
