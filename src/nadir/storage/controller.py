"""One controller per results location: a second `snakemake` on the same S3 storage prefix (or
working directory) stops before it runs a job.

Two controllers on one prefix overwrite each other's outputs and clear each other's
checkpoints. The workflow's onstart handler (workflow/rules/common.smk) claims the location
by creating an owner record, `.nadir-controller.json` under the default storage prefix (or in
the working directory), only where none exists, and reading it back; onsuccess and onerror
remove it. Jobs never claim it:
Snakemake starts them with `--no-hooks` (in pods and local subprocesses alike), and a dry run, a
report or a run with nothing to do never reach onstart.

The claim is a lease: while the controller runs, a thread of its own rewrites the record every
LEASE_RENEW_S seconds. After a crash the record stays, but is no longer renewed; a record not
renewed for LEASE_EXPIRY_S seconds (by the storage's own clock) has lapsed and is taken over with
a warning, as is one left by a process of this machine that no longer runs. So a controller
restarted after a crash (a controller Job's next pod, or the same command again) goes on once
the lease has lapsed; NADIR_TAKE_OVER=1 takes over at once (docs/faults.md), for when the user
knows the other controller is gone.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

from nadir.core.errors import NadirError
from nadir.storage import s3

log = logging.getLogger(__name__)

OWNER_FILE = ".nadir-controller.json"
TAKE_OVER = "NADIR_TAKE_OVER"
LEASE_RENEW_S = 30.0
# Four renewals missed: a controller that still runs renews well within it, even under load.
LEASE_EXPIRY_S = 120.0


class ControllerLockError(NadirError):
    """Another controller owns the results location."""


class LocalOwner:
    """The owner record as a file in a folder (the working directory of a local run)."""

    def __init__(self, folder: Path):
        self.path = Path(folder).resolve() / OWNER_FILE

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def create(self, data: bytes) -> bool:
        """Write the record unless one exists (atomically); whether it was written."""
        try:
            handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return True

    def write(self, data: bytes) -> None:
        """Replace the record (a renewal); written whole or not at all."""
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        partial.write_bytes(data)
        os.replace(partial, self.path)

    def age_s(self) -> float | None:
        """Seconds since the record was last written; None when there is none."""
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.path)


class S3Owner:
    """The owner record as an object under the default storage prefix, written with the
    storage's endpoint and keys (passed in from Snakemake's settings, else the environment)."""

    def __init__(self, prefix: str, endpoint: str | None, access_key: str | None = None,
                 secret_key: str | None = None):
        parts = urlsplit(prefix)
        self.bucket = parts.netloc
        self.key = f"{parts.path.strip('/')}/{OWNER_FILE}".lstrip("/")
        self.endpoint = endpoint
        self.keys = (access_key, secret_key)  # else the storage's keys of the environment
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = s3.client(self.endpoint, keys=self.keys)
        return self._client

    def read(self) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except ClientError as error:
            if s3.error_code(error) in ("NoSuchKey", "NoSuchBucket", "404"):
                return None
            raise NadirError(f"cannot read {self.describe()}: {error}") from None

    def create(self, data: bytes) -> bool:
        """Write the record unless one exists (a conditional PUT, `If-None-Match: *`, as AWS
        documents it and SeaweedFS honours it; a server that ignores it is caught, outside a
        race, by `claim`'s read-back); whether it was written."""
        from botocore.exceptions import ClientError

        put = {"Bucket": self.bucket, "Key": self.key, "Body": data, "IfNoneMatch": "*"}
        try:
            self.client.put_object(**put)
        except ClientError as error:
            code = s3.error_code(error)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            if code != "NoSuchBucket":
                raise NadirError(f"cannot write {self.describe()}: {error}") from None
            self.client.create_bucket(Bucket=self.bucket)
            self.client.put_object(**put)
        return True

    def write(self, data: bytes) -> None:
        """Replace the record (a renewal)."""
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data)

    def age_s(self) -> float | None:
        """Seconds since the record was last written, by the server's clock (its Last-Modified
        against the Date of the same answer: no skew between machines); None when there is
        none."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key)
        except ClientError as error:
            if s3.error_code(error) in ("NoSuchKey", "NoSuchBucket", "404"):
                return None
            raise NadirError(f"cannot read {self.describe()}: {error}") from None
        date = head["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        return (now - head["LastModified"]).total_seconds()

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def owner_store(storage_prefix: str | None, endpoint: str | None = None,
                access_key: str | None = None, secret_key: str | None = None,
                folder: Path = Path(".")) -> LocalOwner | S3Owner:
    """Where a run's owner record lives: under an s3:// default storage prefix, else in
    `folder` (the working directory)."""
    if storage_prefix and storage_prefix.startswith("s3://"):
        return S3Owner(storage_prefix, endpoint, access_key, secret_key)
    return LocalOwner(folder)


def _this_controller() -> dict:
    return {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "user": getpass.getuser(), "workdir": os.getcwd(),
            "started": datetime.now(UTC).isoformat(timespec="seconds")}


def _parsed(record: bytes) -> dict:
    """An owner record; an unreadable one as an owner nobody can identify (never `_gone`)."""
    try:
        owner = json.loads(record)
    except ValueError:
        owner = None
    return owner if isinstance(owner, dict) else {"user": "an unreadable owner record"}


def _gone(owner: dict) -> bool:
    """Whether the owner was a process of this machine that no longer runs."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe(owner: dict) -> str:
    return (f"pid {owner.get('pid')} of {owner.get('user')} on {owner.get('host')}, in "
            f"{owner.get('workdir')}, since {owner.get('started')}")


def claim(store: LocalOwner | S3Owner, take_over: bool | None = None) -> dict:
    """Make this process the owner of the results location; a ControllerLockError when another
    controller owns it. `take_over` (default: NADIR_TAKE_OVER=1 in the environment) replaces
    any owner."""
    if take_over is None:
        take_over = os.environ.get(TAKE_OVER, "").lower() in ("1", "true", "yes")
    found = store.read()
    if found is not None:
        owner = _parsed(found)
        if take_over:
            log.warning("taking over %s from %s (%s is set)", store.describe(), _describe(owner),
                        TAKE_OVER)
            store.delete()
        elif _gone(owner):
            log.warning("%s was left by %s, which no longer runs; taking it over",
                        store.describe(), _describe(owner))
            store.delete()
        elif (age := store.age_s() or 0.0) > LEASE_EXPIRY_S:
            log.warning("%s was left by %s and not renewed for %.0f s (a controller renews it "
                        "every %.0f s while it runs): taking it over", store.describe(),
                        _describe(owner), age, LEASE_RENEW_S)
            store.delete()
        else:
            raise ControllerLockError(
                f"another controller is running on these results ({_describe(owner)}; "
                f"{store.describe()}, renewed {age:.0f} s ago). Two controllers on one location "
                "overwrite each other's outputs and clear each other's checkpoints: wait for it "
                "to finish; if it crashed, its claim lapses "
                f"{LEASE_EXPIRY_S:.0f} s after its last renewal and a new start takes over, or "
                f"start now with {TAKE_OVER}=1 to take over at once (docs/faults.md)")
    mine = _this_controller()
    data = json.dumps(mine, indent=1).encode()
    # Created only where none exists, then read back (for a server that ignores the
    # condition): of two controllers starting at once, one goes on.
    if not store.create(data) or store.read() != data:
        raise ControllerLockError(f"another controller claimed {store.describe()} at the same "
                                  "moment; this one stops")
    log.info("this controller owns %s", store.describe())
    return mine


class Lease:
    """Renews this controller's record every `every_s` seconds on a thread of its own, while it
    is still this controller's (a record taken over is left to its new owner)."""

    def __init__(self, store: LocalOwner | S3Owner, mine: dict, every_s: float = LEASE_RENEW_S):
        self.store, self.mine, self.every_s = store, mine, every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="nadir-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        data = json.dumps(self.mine, indent=1).encode()
        while not self._stopped.wait(self.every_s):
            try:
                found = self.store.read()
                if found is None or _parsed(found).get("id") != self.mine["id"]:
                    log.warning("%s is no longer this controller's; not renewed",
                                self.store.describe())
                    return
                self.store.write(data)
            except Exception as error:  # noqa: BLE001 - a renewal that fails is tried again
                log.warning("could not renew %s (%s); trying again in %.0f s",
                            self.store.describe(), error, self.every_s)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def release(store: LocalOwner | S3Owner, mine: dict, lease: Lease | None = None) -> None:
    """Stop renewing, and remove the owner record if it is still this controller's."""
    if lease is not None:
        lease.stop()
    found = store.read()
    if found is None:
        return
    owner = _parsed(found)
    if owner.get("id") == mine["id"]:
        store.delete()
    else:
        log.warning("%s now belongs to %s (taken over); left as it is", store.describe(),
                    _describe(owner))
