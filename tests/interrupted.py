"""Interrupted and resumed training runs, and the check that one ends as an uninterrupted run.

`train_interrupted_and_uninterrupted` interrupts a run right after its first checkpoint, in one
process; the subprocess-and-SIGKILL tests in test_training_resume.py cover what the train rule
does. Either way, a resumed run must end with the weights and loss log of an uninterrupted one
(`assert_same_run`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_chips
import torch

from nadir.train.backends import TrainJob
from nadir.train.checkpoints import LocalCheckpoints


class Interrupted(Exception):
    """Stands in for the kill: raised by the store once the checkpoint is safely written."""


class InterruptingStore(LocalCheckpoints):
    def save(self, iteration: int, data: bytes) -> None:
        super().save(iteration, data)
        raise Interrupted(iteration)


def train_interrupted_and_uninterrupted(backend, model: str, hp: dict, tmp_path: Path,
                                        checkpoint_every: int, size: int = 64
                                        ) -> tuple[Path, Path, int]:
    """Train `model` straight through and with an interruption; return both out dirs and the
    iteration the second run resumed from."""
    data = tiny_chips.build(tmp_path / "data", chips=4, size=size)

    def job(out: str, checkpoints: LocalCheckpoints | None) -> TrainJob:
        return tiny_chips.train_job(data, model, hp, tmp_path / out, threads=1, world_size=1,
                                    checkpoints=checkpoints, checkpoint_every=checkpoint_every)

    backend.train(job("reference", None))
    with pytest.raises(Interrupted):
        backend.train(job("resumed", InterruptingStore(tmp_path / "ck")))
    assert not (tmp_path / "resumed" / "model.pt").exists()
    result = backend.train(job("resumed", LocalCheckpoints(tmp_path / "ck")))
    return tmp_path / "reference", tmp_path / "resumed", result["resumed_from"]


def final_state(out_dir: Path) -> dict:
    return torch.load(out_dir / "model.pt", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def assert_same_run(reference: Path, resumed: Path) -> None:
    """Bit-identical final weights and the same loss log (timings aside)."""
    assert_same_weights(final_state(reference), final_state(resumed))
    timing = {"seconds", "images_per_second"}

    def losses(out: Path) -> list[dict]:
        log = json.loads((out / "train_log.json").read_text())
        return [{k: v for k, v in e.items() if k not in timing} for e in log]

    assert losses(resumed) == losses(reference)
