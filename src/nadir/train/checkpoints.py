"""Where training checkpoints live while a job runs: a local directory or an S3 prefix.

Checkpoints sit outside the job's declared outputs on purpose: Snakemake deletes the outputs of a
failed job, and a job killed mid-run (a preempted pod, a closed laptop) must find its newest
checkpoint on the next attempt. Each checkpoint is one object named after its iteration, written
atomically (a local rename, or a single S3 PUT), so a kill during a write never leaves a
half-written newest checkpoint behind.

S3 uses the same endpoint and credentials as Snakemake's S3 storage (`nadir.storage.s3`): the
endpoint is passed in (it is no secret), the keys come from the environment, never from a
command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from nadir.core.errors import NadirError
from nadir.core.schema import schema_default
from nadir.storage import s3

log = logging.getLogger(__name__)

NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def checkpoint_name(iteration: int) -> str:
    return f"ckpt-{iteration:09d}.pt"


class CheckpointStore(ABC):
    """The checkpoints of one training run, newest kept, older ones pruned."""

    def __init__(self, keep: int | None = None):
        """`keep`: the newest checkpoints kept (None: the schema's `checkpoints.keep`)."""
        keep = schema_default("checkpoints", "keep") if keep is None else keep
        if keep < 1:
            raise NadirError(f"checkpoints.keep must be at least 1, got {keep}")
        self.keep = keep

    @abstractmethod
    def iterations(self) -> list[int]:
        """Iterations of the stored checkpoints, oldest first."""

    @abstractmethod
    def read(self, iteration: int) -> bytes: ...

    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Store a file under the run's location (atomically): checkpoints, and files kept
        beside them such as TensorBoard's event files."""

    def write(self, iteration: int, data: bytes) -> None:
        self.put(checkpoint_name(iteration), data)

    @abstractmethod
    def delete(self, iteration: int) -> None: ...

    @abstractmethod
    def describe(self) -> str:
        """Where the checkpoints are, for log lines (never with credentials)."""

    def save(self, iteration: int, data: bytes) -> None:
        """Store a checkpoint, then drop all but the newest `keep`."""
        self.write(iteration, data)
        for old in self.iterations()[: -self.keep]:
            self.delete(old)
        log.info("checkpoint at iteration %d written to %s (%.1f MB)", iteration,
                 self.describe(), len(data) / 1e6)

    def newest(self) -> tuple[int, bytes] | None:
        """(iteration, bytes) of the newest checkpoint, or None when there is none."""
        found = self.iterations()
        if not found:
            return None
        return found[-1], self.read(found[-1])

    def clear(self) -> None:
        for iteration in self.iterations():
            self.delete(iteration)


class LocalCheckpoints(CheckpointStore):
    def __init__(self, directory: Path, keep: int | None = None):
        super().__init__(keep)
        self.directory = Path(directory)

    def iterations(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir()
                      if (m := NAME.match(p.name)))

    def read(self, iteration: int) -> bytes:
        return (self.directory / checkpoint_name(iteration)).read_bytes()

    def put(self, name: str, data: bytes) -> None:
        final = self.directory / name
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + f".partial-{os.getpid()}")
        partial.write_bytes(data)
        os.replace(partial, final)

    def delete(self, iteration: int) -> None:
        (self.directory / checkpoint_name(iteration)).unlink(missing_ok=True)

    def clear(self) -> None:
        super().clear()
        with contextlib.suppress(OSError):  # left in place when something else is in it
            self.directory.rmdir()

    def describe(self) -> str:
        return str(self.directory)


class S3Checkpoints(CheckpointStore):
    def __init__(self, bucket: str, prefix: str, endpoint: str | None,
                 keep: int | None = None):
        super().__init__(keep)
        self.bucket, self.prefix, self.endpoint = bucket, prefix.strip("/"), endpoint
        self._client = None

    @property
    def client(self):
        """The storage's client, made on first use (so a store can be pickled to DDP
        workers)."""
        if self._client is None:
            self._client = s3.client(self.endpoint)
        return self._client

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def iterations(self) -> list[int]:
        from botocore.exceptions import ClientError

        found = []
        try:
            for item in s3.list_objects(self.client, self.bucket, self.prefix + "/"):
                if m := NAME.match(item["Key"].rsplit("/", 1)[-1]):
                    found.append(int(m.group(1)))
        except ClientError as error:
            if s3.error_code(error) == "NoSuchBucket":
                return []
            raise NadirError(f"cannot list checkpoints in {self.describe()}: {error}") from None
        return sorted(found)

    def read(self, iteration: int) -> bytes:
        key = self._key(checkpoint_name(iteration))
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, name: str, data: bytes) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        except ClientError as error:
            if s3.error_code(error) != "NoSuchBucket":
                raise NadirError(f"cannot write {name} to {self.describe()}: {error}") from None
            self.client.create_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def delete(self, iteration: int) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(checkpoint_name(iteration)))

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def open_store(location: str, endpoint: str | None = None,
               keep: int | None = None) -> CheckpointStore:
    """A store for `location`: `s3://bucket/prefix` or a local directory path."""
    if location.startswith("s3://"):
        parsed = urlparse(location)
        if not parsed.netloc or not parsed.path.strip("/"):
            raise NadirError(f"checkpoint location {location!r}: expected s3://BUCKET/PREFIX")
        return S3Checkpoints(parsed.netloc, parsed.path, endpoint, keep)
    if "://" in location:
        raise NadirError(f"checkpoint location {location!r}: expected a local directory or "
                         "s3://BUCKET/PREFIX")
    return LocalCheckpoints(Path(location), keep)


# --- live training curves: TensorBoard event files beside the checkpoints ---------------------
#
# Live training curves: TensorBoard event files beside a run's checkpoints.
#
# A 48-hour run should show its losses, learning rate, throughput and selection AP while it
# trains. The events are written to a local folder and copied to the run's checkpoint location
# (a local directory or an S3 prefix, `tensorboard/` under it) at every publish, so
# `tensorboard --logdir <checkpoint root>` (TensorBoard reads s3:// too) shows every run as it
# goes, and a killed pod loses at most the events since the last publish. A resumed run writes a
# new event file and tells TensorBoard to drop the older files' steps from the resume point on.

EVENTS_FOLDER = "tensorboard"


class LiveCurves:
    """The event file of one training process (rank 0 only)."""

    def __init__(self, store: CheckpointStore | None, fallback_dir: Path, first_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.store = store
        if store is None:  # no checkpoint location: keep the events beside the outputs
            self.folder = Path(fallback_dir) / EVENTS_FOLDER
            self._scratch = None
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="nadir-tensorboard-")
            self.folder = Path(self._scratch.name)
        # A run resumed from the checkpoint at `first_step` redoes the steps after it.
        self.writer = SummaryWriter(str(self.folder),
                                    purge_step=first_step + 1 if first_step else None)

    def add(self, step: int, values: dict[str, float]) -> None:
        """One scalar per tag at `step` (tags group by their prefix: `loss/...`)."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def publish(self) -> None:
        """Flush the events and copy them to the checkpoint location."""
        self.writer.flush()
        if self.store is None:
            return
        for path in sorted(self.folder.glob("events.out.tfevents.*")):
            self.store.put(f"{EVENTS_FOLDER}/{path.name}", path.read_bytes())

    def close(self) -> None:
        self.publish()
        self.writer.close()
        if self._scratch is not None:
            self._scratch.cleanup()
