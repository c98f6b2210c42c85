"""Checkpoints and resume: a killed run continues where it stopped and ends with the same weights.

Every run here is the train job in a subprocess (tests/train_job.py) on a tiny dataset the test
builds (64 px chips, SSDlite, one thread, CPU), so what is tested is what the train rule runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tiny_chips
import torch
from interrupted import (
    assert_same_run,
    assert_same_weights,
    final_state,
    train_interrupted_and_uninterrupted,
)

from nadir.core.errors import NadirError
from nadir.core.hashing import sha256_of
from nadir.train.checkpoints import LocalCheckpoints, open_store
from nadir.train.data import SeededBatches

ROOT = Path(__file__).resolve().parents[1]
MODEL = "ssdlite320_mobilenet_v3_large"


def train_command(data: dict, out_dir: Path, hp: dict, checkpoints: str | None = None,
                  every: int = 0, keep: int = 2, shard: str | None = None) -> list[str]:
    """The train job in a process of its own (tests/train_job.py), as the rule runs it;
    `shard` replaces the local shard (an s3:// URL: streamed)."""
    job = {"dataset": "tiny", "model": MODEL, "hp": hp, "train": str(data["coco"]),
           "manifest": str(data["manifest"]), "shards": [shard or str(data["shard"])],
           "weights": str(out_dir / "model.pt"), "train_log": str(out_dir / "train_log.json"),
           "run_record": str(out_dir / "run.json"),
           "resolved_config": str(out_dir / "resolved_config.json"),
           "checkpoints": {"every": every, "keep": keep}, "checkpoint_folder": checkpoints,
           "threads": 1}
    return [sys.executable, str(ROOT / "tests" / "train_job.py"), json.dumps(job)]


def run_env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(extra or {})}


def kill_after_first_checkpoint(command: list[str], env: dict, log_path: Path,
                                find: Callable[[], list]) -> list:
    """Start a run, SIGKILL it as soon as `find` lists a checkpoint; return that listing."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stderr=log, stdout=log, env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            found = find()
            if found:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return found
            time.sleep(0.01)
    raise AssertionError(f"no checkpoint before the run ended ({process.poll()}): "
                         f"{log_path.read_text()[-2000:]}")


def local_checkpoints(root: Path) -> Callable[[], list[Path]]:
    return lambda: sorted(root.glob("*/ckpt-*.pt"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_chips.build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The reference: 24 iterations without checkpoints."""
    out = tmp_path_factory.mktemp("uninterrupted")
    hp = tiny_chips.hyperparameters(iterations=24, log_interval=4)
    subprocess.run(train_command(data, out, hp), check=True, env=run_env(),
                   capture_output=True, timeout=900)
    return out, hp


@pytest.mark.slow
def test_other_settings_never_resume_a_stale_checkpoint(data, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    hp = tiny_chips.hyperparameters(iterations=4)
    first = train_command(data, tmp_path / "a", hp | {"iterations": 40}, str(checkpoints),
                          every=1)
    kill_after_first_checkpoint(first, run_env(), tmp_path / "a.log",
                                local_checkpoints(checkpoints))
    changed = train_command(data, tmp_path / "b", hp, str(checkpoints), every=100)
    rerun = subprocess.run(changed, env=run_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "starting at iteration 0" in rerun.stderr
    assert "resuming" not in rerun.stderr
    # The first run's checkpoint is left where it was, under its own fingerprint.
    assert len(list(checkpoints.glob("*/ckpt-*.pt"))) == 1


def test_run_writes_its_records_and_removes_its_checkpoints(data, tmp_path, monkeypatch):
    """`nadir.train.run` (what the train rule calls): checkpoints under the run's
    fingerprint while it trains, run.json and resolved_config.json beside the weights, and no
    checkpoint left once the weights are written. The recipe is planned once, and the
    backend trains with the plan run.json records."""
    from nadir.train import recipes, run, runner

    written, plans = [], []
    plan = recipes.training_plan

    def planned(*args):  # a plan no backend would make itself: it must take the runner's
        plans.append(dataclasses.replace(plan(*args), lr=plan(*args).lr * 3))
        return plans[-1]

    monkeypatch.setattr(recipes, "training_plan", planned)

    class WatchedCheckpoints(LocalCheckpoints):
        def save(self, iteration: int, data: bytes) -> None:
            super().save(iteration, data)
            written.extend(self.directory.glob("ckpt-*.pt"))

    monkeypatch.setattr(runner, "open_store", lambda location, endpoint, keep:
                        WatchedCheckpoints(Path(location), keep))
    hp = tiny_chips.hyperparameters(iterations=4, log_interval=2)
    job = tiny_chips.train_job(data, MODEL, hp, tmp_path / "out", checkpoint_every=2)
    record = run(job, str(tmp_path / "ck"))
    out = tmp_path / "out"
    assert json.loads((out / "run.json").read_text()) == record
    assert record["backend"] == "torchvision" and record["training"]["iterations"] == 4
    assert record["inputs"]["train_coco"] == sha256_of(data["coco"])[:16]
    resolved = json.loads((out / "resolved_config.json").read_text())
    fingerprint = resolved["checkpoints"]["fingerprint"]
    assert resolved["training"] == record["training"]
    assert [p.relative_to(tmp_path / "ck").as_posix() for p in written] == \
        [f"{fingerprint}/ckpt-000000002.pt"]
    assert not list((tmp_path / "ck").rglob("ckpt-*.pt"))
    assert (out / "model.pt").exists() and (out / "train_log.json").exists()
    assert len(plans) == 1 and record["recipe"] == plans[0].record()
    rows = json.loads((out / "train_log.json").read_text())
    assert rows[0]["lr"] == pytest.approx(plans[0].lr * recipes.lr_factor(plans[0])(2))


def test_deterministic_runs_give_identical_weights_and_record_their_settings(data, tmp_path,
                                                                           monkeypatch):
    """`training.deterministic`: two CPU runs end with bit-identical weights, and run.json
    says which settings made them so (docs/reproducibility.md)."""
    from nadir.train import run

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored after the test
    hp = tiny_chips.hyperparameters(iterations=2, log_interval=2, deterministic=True)
    try:
        records = [run(tiny_chips.train_job(data, MODEL, hp, tmp_path / name))
                   for name in ("first", "second")]
    finally:
        torch.use_deterministic_algorithms(False)  # this process trains other tests too
    assert_same_weights(final_state(tmp_path / "first"), final_state(tmp_path / "second"))
    recorded = json.loads((tmp_path / "first" / "run.json").read_text())["training"]
    assert recorded["determinism"] == records[1]["training"]["determinism"] == {
        "seed": 0, "deterministic": True, "deterministic_algorithms": True,
        "cublas_workspace_config": ":4096:8", "cudnn_benchmark": False}
    assert recorded["iterations"] == 2


def test_run_without_the_pretrained_weights_it_asks_for_fails_before_training(data, tmp_path):
    from nadir.train import run

    hp = tiny_chips.hyperparameters(pretrained="coco")
    with pytest.raises(NadirError, match="ssdlite320_mobilenet_v3_large_coco-a79551df.pth"):
        run(tiny_chips.train_job(data, MODEL, hp, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_killed_run_resumes_from_its_s3_checkpoint_to_the_same_weights(data, uninterrupted, s3,
                                                                        tmp_path):
    """Remote-first: the shard is streamed from S3 (never on the job's disk), the checkpoints
    go to S3, and the killed and resumed run ends as the uninterrupted local one."""
    reference, hp = uninterrupted
    bucket = "nadir-ckpt-test"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    client.upload_file(str(data["shard"]), bucket, "results/tiny/chips/shard-000.tar")
    env = run_env({"SNAKEMAKE_STORAGE_S3_ACCESS_KEY": s3.access_key,
                   "SNAKEMAKE_STORAGE_S3_SECRET_KEY": s3.secret_key,
                   "NADIR_STORAGE_S3_ENDPOINT": s3.endpoint})
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env.pop(name, None)  # the keys must come from Snakemake's variables
    out = tmp_path / "out"
    command = train_command(data, out, hp, f"s3://{bucket}/runs/tiny/{MODEL}", every=3, keep=1,
                            shard=f"s3://{bucket}/results/tiny/chips/shard-000.tar")

    def uploaded() -> list[str]:
        listing = client.list_objects_v2(Bucket=bucket, Prefix="runs/tiny/")
        return [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".pt")]

    keys = kill_after_first_checkpoint(command, env, tmp_path / "killed.log", uploaded)
    assert keys[0].startswith(f"runs/tiny/{MODEL}/") and keys[0].endswith(".pt")
    assert not (out / "model.pt").exists()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed_at = int(rerun.stderr.split("resuming from the checkpoint at iteration ")[1]
                     .split("/")[0])
    assert 3 <= resumed_at < 24
    assert f"s3://{bucket}/runs/tiny/{MODEL}/" in rerun.stderr
    assert s3.secret_key not in rerun.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["training"]["iterations"] == 24
    assert run["training"]["resumed_from"] == resumed_at
    # Same weights, and the loss log carries the intervals from before the kill.
    assert_same_run(reference, out)
    log = json.loads((out / "train_log.json").read_text())
    assert [e["iteration"] for e in log] == [4, 8, 12, 16, 20, 24]
    listing = client.list_objects_v2(Bucket=bucket, Prefix="runs/tiny/")
    left = [o["Key"].split("/", 4)[-1] for o in listing.get("Contents", [])]
    # A finished run leaves no checkpoint behind, only its TensorBoard events (the resumed
    # run's file, and the killed run's when it was killed after copying its own).
    assert left and all(k.startswith("tensorboard/events.out.tfevents.") for k in left)


def test_s3_store_keeps_the_newest_and_rejects_bad_locations(s3, monkeypatch):
    monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_ACCESS_KEY", s3.access_key)
    monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_SECRET_KEY", s3.secret_key)
    store = open_store("s3://nadir-store-test/a/b", s3.endpoint, keep=2)
    assert store.newest() is None  # the bucket does not exist yet
    for iteration in (5, 10, 15):
        store.save(iteration, f"state {iteration}".encode())
    assert store.iterations() == [10, 15]
    assert store.newest() == (15, b"state 15")
    store.clear()
    assert store.iterations() == []
    from nadir.core.errors import NadirError

    for bad in ("s3://bucket-only", "gs://bucket/prefix"):
        with pytest.raises(NadirError, match="expected"):
            open_store(bad)


def test_local_store_writes_atomically_and_prunes(tmp_path):
    store = LocalCheckpoints(tmp_path / "ck", keep=1)
    store.save(1, b"one")
    store.save(2, b"two")
    assert store.newest() == (2, b"two")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["ckpt-000000002.pt"]


def test_batches_depend_only_on_seed_and_step():
    def take(sampler, steps):
        stream = iter(sampler)
        return [next(stream) for _ in range(steps)]

    whole = take(SeededBatches(5, 2, seed=3, augment=True), 8)
    assert take(SeededBatches(5, 2, seed=3, start_step=5, augment=True), 3) == whole[5:]
    # Two processes take the two halves of each batch of the single process with batch 4.
    single = take(SeededBatches(5, 4, seed=3, augment=True), 4)
    rank0 = take(SeededBatches(5, 2, seed=3, rank=0, world_size=2, augment=True), 4)
    rank1 = take(SeededBatches(5, 2, seed=3, rank=1, world_size=2, augment=True), 4)
    assert [a + b for a, b in zip(rank0, rank1, strict=True)] == single
    # Every chip is seen once per epoch; codes are symmetries 0..7 (0 only without augment).
    epoch = [i for batch in take(SeededBatches(5, 5, seed=3), 1) for i, _ in batch]
    assert sorted(epoch) == [0, 1, 2, 3, 4]
    assert {code for batch in whole for _, code in batch} <= set(range(8))
    assert {code for batch in take(SeededBatches(5, 2, seed=3), 4) for _, code in batch} == {0}


@pytest.mark.slow
def test_two_process_ddp_on_cpu_checkpoints_and_resumes(data, tmp_path):
    """The DistributedDataParallel path (gloo, 2 processes): it trains, checkpoints the random
    states of both processes, and a rerun resumes from that checkpoint to the same weights."""
    from nadir.train.backends import TrainJob, get_backend

    hp = tiny_chips.hyperparameters(iterations=6, batch_size=2, log_interval=3)

    def job(out: str) -> TrainJob:
        return tiny_chips.train_job(data, MODEL, hp, tmp_path / out, threads=2, world_size=2,
                                    checkpoint_every=3,
                                    checkpoints=LocalCheckpoints(tmp_path / "ck"))

    backend = get_backend("torchvision")
    first = backend.train(job("first"))
    assert first["processes"] == 2 and first["resumed_from"] == 0
    saved = torch.load(tmp_path / "ck" / "ckpt-000000003.pt", weights_only=True)
    assert len(saved["rng"]) == 2
    second = backend.train(job("second"))  # the checkpoint at 3 is still there: resume
    assert second["resumed_from"] == 3
    assert_same_weights(final_state(tmp_path / "second"), final_state(tmp_path / "first"))
    log = json.loads((tmp_path / "first" / "train_log.json").read_text())
    assert [e["iteration"] for e in log] == [3, 6]
    assert log[0]["images_per_second"] > 0


@pytest.mark.slow
def test_resume_continues_the_random_stream_of_a_sampling_model(tmp_path, monkeypatch):
    """Faster R-CNN draws its RPN and ROI samples from torch's global generator: a resumed run
    must continue that stream where the checkpoint left it. (At 64 px there are fewer anchors
    than samples, every candidate is taken and the stream would not matter: hence 192 px. With
    64 proposals it still samples 32 of them per image.)"""
    from nadir.train.loop import LoopBackend

    model = "fasterrcnn_mobilenet_v3_large_fpn"
    tiny_chips.use_few_regions(monkeypatch, model)
    hp = tiny_chips.hyperparameters(iterations=4, log_interval=2, amp=False)
    reference, resumed, resumed_from = train_interrupted_and_uninterrupted(
        LoopBackend(), model, hp, tmp_path,
        checkpoint_every=2, size=192)
    assert resumed_from == 2
    assert_same_run(reference, resumed)
