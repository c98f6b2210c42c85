"""Chips read where their shards are: S3 by ranged reads at the recorded offsets, as local files.

Shards built here (noise PNG chips, offsets recorded as the chip stage records them) are put on
the session's SeaweedFS server; what is checked is what a training or evaluation job relies on:
the same bytes as from local disk, only the bytes of the chips it uses, a cache that keeps to
its limit, and errors that name the shard and the chip.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from nadir.core.errors import InputError
from nadir.storage.shards import (
    CACHE_BYTES_VARIABLE,
    CACHE_DIR_VARIABLE,
    ChipCache,
    ShardReader,
    add_member,
    cache_from_environment,
    read_chips,
)
from nadir.train.data import SeededBatches, ShardChips

BUCKET = "nadir-streaming-test"
CHIPS_PER_SHARD = (7, 5)


def noise_png(rng: np.random.Generator, side: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def shards(s3, tmp_path_factory):
    """Two local shards, their copies on S3, and a COCO file of the train chips: every shard
    also holds val chips (between train ones), which a training epoch never reads."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    images, local, remote = [], [], []
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    for index, count in enumerate(CHIPS_PER_SHARD):
        path = root / f"shard-{index:03d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for number in range(count):
                name = f"s{index}-chip-{number}.png"
                offset, size = add_member(tar, name, noise_png(rng, 72 + 8 * number))
                if number != 2:  # the val chip
                    images.append({"id": len(images) + 1, "file_name": name, "shard": index,
                                   "offset": offset, "size": size, "width": 1, "height": 1})
        key = f"results/d/chips/{path.name}"
        client.upload_file(str(path), BUCKET, key)
        local.append(str(path))
        remote.append(f"s3://{BUCKET}/{key}")
    coco = root / "train.json"
    coco.write_text(json.dumps({"images": images, "annotations": [],
                                "categories": [{"id": 1, "name": "thing"}]}))
    return {"local": local, "remote": remote, "coco": coco, "images": images}


@pytest.fixture
def storage_keys(s3, monkeypatch):
    """The job's environment: the storage's keys, as Snakemake hands them on, and its
    endpoint, as the workflow sets it."""
    monkeypatch.setenv("NADIR_STORAGE_S3_ENDPOINT", s3.endpoint)
    for name, value in s3.env().items():
        if name.startswith("SNAKEMAKE_STORAGE_S3_"):
            monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)


def used_bytes(images: list[dict]) -> int:
    return sum(im["size"] for im in images)


def test_an_epoch_streamed_gets_the_local_chips_and_fetches_only_their_bytes(
        shards, s3, storage_keys):
    """A shuffled epoch (the training sampler, augmentation codes and all) read ahead from
    S3: item for item the local run's pixels, and S3 sent at most 1.05 x the bytes of the
    chips the epoch uses, though every shard also holds chips it does not."""
    reader = ShardReader(shards["remote"], endpoint=s3.endpoint)
    streamed = ShardChips(shards["coco"], shards["remote"], augment=True, reader=reader)
    local = ShardChips(shards["coco"], shards["local"], augment=True)
    n = len(local)
    sampler = SeededBatches(n, batch_size=2, seed=3, augment=True)
    epoch = [key for _, key in zip(range(n // 2), iter(sampler), strict=False)]
    for batch in streamed.read_ahead(epoch):
        for key in batch:
            assert len(key) == 3 and isinstance(key[2], bytes)  # read ahead, not in the loader
            ours, theirs = streamed[key], local[key[:2]]
            assert torch.equal(ours[0], theirs[0])
            assert ours[1]["image_id"] == theirs[1]["image_id"]
    epoch_images = [shards["images"][key[0]] for batch in epoch for key in batch]
    assert reader.bytes_fetched >= used_bytes(epoch_images)
    assert reader.bytes_fetched <= 1.05 * used_bytes(epoch_images)


def test_chips_in_order_are_coalesced_into_one_request_per_run(shards, s3, storage_keys):
    """Evaluation reads in order: each batch's adjacent chips come in one ranged request (the
    val chip between train chips splits a run), and the bytes equal the local file's."""
    reader = ShardReader(shards["remote"], endpoint=s3.endpoint)
    streamed = ShardChips(shards["coco"], shards["remote"], reader=reader)
    batches = list(streamed.in_order(batch=len(streamed)))
    assert len(batches) == 1 and len(batches[0]) == len(shards["images"])
    assert reader.requests == 2 * len(CHIPS_PER_SHARD)  # each shard: before and after val
    assert reader.bytes_fetched <= 1.05 * used_bytes(shards["images"])
    assert read_chips(shards["remote"], shards["images"], shards["coco"]) == \
        read_chips(shards["local"], shards["images"], shards["coco"])


def test_the_cache_keeps_to_its_limit_and_serves_the_next_reader(shards, s3, storage_keys,
                                                                 tmp_path, monkeypatch):
    images = shards["images"]
    members = [(im["shard"], im["file_name"], im["offset"], im["size"]) for im in images]
    limit = used_bytes(images[:4])
    cache = ChipCache(tmp_path / "cache", limit)
    first = ShardReader(shards["remote"], cache=cache, endpoint=s3.endpoint)
    expected = first.read(members)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert 0 < on_disk <= limit and cache.size == on_disk
    # A later job on the node (its cache from the workflow's `streaming` settings, handed on
    # in the environment) fetches less.
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setenv(CACHE_BYTES_VARIABLE, str(limit))
    second = ShardReader(shards["remote"], cache=cache_from_environment(), endpoint=s3.endpoint)
    assert second.read(members) == expected
    assert second.bytes_fetched < first.bytes_fetched
    # A smaller limit given later evicts at once.
    assert ChipCache(tmp_path / "cache", limit // 4).size <= limit // 4


def test_a_coco_file_without_offsets_is_scanned_locally_and_refused_on_s3(shards, tmp_path):
    """COCO files written before the chip lists recorded offsets: local shards are scanned for
    their chips as before; S3 shards are not scanned (every header would be a request).
    (Shards cut short or gone: the fault case `shard-shorter-than-its-chip-list`.)"""
    unrecorded = tmp_path / "old.json"
    unrecorded.write_text(json.dumps({"images": [
        {k: v for k, v in im.items() if k not in ("offset", "size")}
        for im in shards["images"]], "annotations": [], "categories": []}))
    with pytest.raises(InputError, match=r"old\.json: .*no member offsets.*rerun the coco"):
        ShardChips(unrecorded, shards["remote"])
    scanned = ShardChips(unrecorded, shards["local"])
    assert [scanned.member(i) for i in range(len(scanned))] == \
        [(im["shard"], im["file_name"], im["offset"], im["size"]) for im in shards["images"]]


def test_chips_reach_the_model_as_their_bytes_scaled_on_its_device(shards):
    """The loader passes chips as stored (uint8, a quarter of float32's bytes); the model gets
    exactly the decoded values / 255, laid out CHW, whatever symmetry the sampler chose."""
    chips = ShardChips(shards["coco"], shards["local"], augment=True)
    decoded = np.asarray(Image.open(io.BytesIO(read_chips(
        shards["local"], shards["images"][:1], shards["coco"])[0])).convert("RGB"))
    expected = torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 255.0
    for code, turned in ((0, expected), (1, expected.flip(2)), (6, expected.flip(1).mT)):
        image, _ = chips[(0, code)]
        assert image.dtype == torch.uint8
        (scaled,) = chips.model_inputs([image], torch.device("cpu"))
        assert scaled.is_contiguous() and scaled.dtype == torch.float32
        assert torch.equal(scaled, turned)


def test_a_negative_recorded_range_is_refused_before_any_request(shards, tmp_path):
    """A COCO file whose chip lies at a negative offset (edited, or not nadir's) is refused
    naming the file and the chip, for S3 shards too, before a malformed Range is sent."""
    coco = json.loads(shards["coco"].read_text())
    coco["images"][1]["offset"] = -512
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(coco))
    with pytest.raises(InputError, match=r"edited\.json: chip s0-chip-1\.png of shard 0 is "
                                         r"recorded at bytes -512 .*rerun the coco stage"):
        ShardChips(edited, shards["remote"])
