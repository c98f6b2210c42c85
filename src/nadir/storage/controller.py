"""One controller per results location: a second `snakemake` on the same S3 storage prefix (or
working directory) stops before it runs a job.

Two controllers on one prefix overwrite each other's outputs and clear each other's
checkpoints. The workflow's onstart handler (workflow/rules/common.smk) claims the location
by creating an owner record, `.nadir-controller.json` under the default storage prefix (or in
the working directory), only where none exists, and reading it back; onsuccess and onerror
remove it. Jobs never claim it:
Snakemake starts them with `--no-hooks` (in pods and local subprocesses alike), and a dry run, a
report or a run with nothing to do never reach onstart.

After a crash the record stays. One left by a process of this machine that no longer runs is
taken over with a warning; one from another machine only when the user says so, with
NADIR_TAKE_OVER=1 (docs/faults.md), once they know the other controller is gone.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from nadir.core.errors import NadirError
from nadir.storage import s3

log = logging.getLogger(__name__)

OWNER_FILE = ".nadir-controller.json"
TAKE_OVER = "NADIR_TAKE_OVER"


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
        else:
            raise ControllerLockError(
                f"another controller is running on these results ({_describe(owner)}; "
                f"{store.describe()}). Two controllers on one location overwrite each other's "
                "outputs and clear each other's checkpoints: wait for it to finish, or, if it "
                f"crashed and no longer runs, start this run with {TAKE_OVER}=1 to take over "
                "(docs/faults.md)")
    mine = _this_controller()
    data = json.dumps(mine, indent=1).encode()
    # Created only where none exists, then read back (for a server that ignores the
    # condition): of two controllers starting at once, one goes on.
    if not store.create(data) or store.read() != data:
        raise ControllerLockError(f"another controller claimed {store.describe()} at the same "
                                  "moment; this one stops")
    log.info("this controller owns %s", store.describe())
    return mine


def release(store: LocalOwner | S3Owner, mine: dict) -> None:
    """Remove the owner record if it is still this controller's."""
    found = store.read()
    if found is None:
        return
    owner = _parsed(found)
    if owner.get("id") == mine["id"]:
        store.delete()
    else:
        log.warning("%s now belongs to %s (taken over); left as it is", store.describe(),
                    _describe(owner))
