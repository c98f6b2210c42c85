"""Live training curves: TensorBoard event files beside a run's checkpoints.

A 48-hour run should show its losses, learning rate, throughput and selection AP while it
trains. The events are written to a local folder and copied to the run's checkpoint location
(a local directory or an S3 prefix, `tensorboard/` under it) at every publish, so
`tensorboard --logdir <checkpoint root>` (TensorBoard reads s3:// too) shows every run as it
goes, and a killed pod loses at most the events since the last publish. A resumed run writes a
new event file and tells TensorBoard to drop the older files' steps from the resume point on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from nadir.train.checkpoints import CheckpointStore

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
