"""The torchvision backend: one training loop (AMP, DDP, checkpoints, resume) and prediction.

The loop reads top to bottom: build, resume, then per iteration forward, backward, clip, step,
log, checkpoint. With several processes (one per GPU, or `world_size` on the CPU with gloo) each
takes its slice of every global batch and DistributedDataParallel averages the gradients; only
rank 0 logs, checkpoints and writes outputs.
"""

from __future__ import annotations

import io
import json
import logging
import math
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from nadir.errors import NadirError
from nadir.training.backend import TrainJob, base_resolved_config, fingerprint
from nadir.training.data import (
    SeededBatches,
    ShardChips,
    category_labels,
    collate,
    model_targets,
)
from nadir.training.detectors import build_detector

log = logging.getLogger(__name__)


def warmup_cosine(warmup: int, total: int):
    """Learning-rate factor: linear warm-up, then cosine decay to zero at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def world_size_for(requested: int | None) -> int:
    """Processes to train with: as requested, else one per visible GPU, else one."""
    if requested is not None:
        return max(1, requested)
    return max(1, torch.cuda.device_count())


def loader_workers(threads: int, world_size: int, device: torch.device) -> int:
    """Data loader processes per training process, from the job's threads.

    On a GPU every thread but one decodes chips (the one drives the GPU); on the CPU the
    threads do the model's arithmetic and the main process decodes (JPEG decoding is cheap
    next to a CPU training step).
    """
    per_process = max(1, threads // world_size)
    return 0 if device.type == "cpu" else min(8, max(1, per_process - 1))


def loader_generator(seed: int) -> torch.Generator:
    """The data loader's own generator.

    Without one, every loader iterator draws its worker seed from torch's global generator, so a
    resumed run, which restores that generator's state and then starts its loader, would be one
    draw ahead of the uninterrupted run from then on (Faster R-CNN samples from that stream).
    """
    return torch.Generator().manual_seed(seed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rng_state(device: torch.device) -> dict:
    """torch's random state on the CPU and, when training there, on the GPU."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


class TorchvisionBackend:
    name = "torchvision"

    def train(self, job: TrainJob) -> dict:
        world = world_size_for(job.world_size)
        if world == 1:
            return _train_process(0, job, 1, None, None)
        with tempfile.TemporaryDirectory(prefix="nadir-ddp-") as result_dir:
            log.info("starting %d training processes (DistributedDataParallel)", world)
            torch.multiprocessing.spawn(_train_process, args=(job, world, _free_port(),
                                                              result_dir),
                                        nprocs=world, join=True)
            return json.loads((Path(result_dir) / "result.json").read_text())

    def resume(self, job: TrainJob) -> dict | None:
        if job.checkpoints is None:
            return None
        newest = job.checkpoints.newest()
        if newest is None:
            return None
        iteration, data = newest
        # Only our own checkpoints are read; weights_only keeps it to tensors and plain data.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint(job) or state["iteration"] != iteration:
            raise NadirError(f"checkpoint {iteration} in {job.checkpoints.describe()} belongs "
                             "to another run (its fingerprint differs); remove it to start over")
        return state

    def predict(self, weights: Path, coco_json: Path, shards: list[Path], hp: dict,
                threads: int = 1) -> list[dict]:
        return predict(weights, coco_json, shards, hp, threads)

    def resolved_config(self, job: TrainJob) -> dict:
        world = world_size_for(job.world_size)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return base_resolved_config(job) | {"runtime": {
            "device": device, "processes": world,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "amp": bool(job.hp["amp"]) and device == "cuda",
            "loader_workers": loader_workers(job.threads, world, torch.device(device)),
            "torch_threads": max(1, job.threads // world),
            "cuda_build": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
            if device == "cuda" else None}}


def _train_process(rank: int, job: TrainJob, world: int, port: int | None,
                   result_dir: str | None) -> dict:
    """One training process (rank 0 alone without DDP); returns rank 0's summary."""
    distributed = world > 1
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                init_method=f"tcp://127.0.0.1:{port}")
    try:
        summary = _loop(rank, job, world, device)
    finally:
        if distributed:
            dist.destroy_process_group()
    if rank == 0 and result_dir is not None:
        (Path(result_dir) / "result.json").write_text(json.dumps(summary))
    return summary if rank == 0 else {}


def _loop(rank: int, job: TrainJob, world: int, device: torch.device) -> dict:
    hp, lead = job.hp, rank == 0
    torch.manual_seed(hp["seed"])
    torch.set_num_threads(max(1, job.threads // world))
    dataset = ShardChips(job.train_json, job.shards, augment=hp["augment"])
    if len(dataset) == 0:
        raise NadirError(f"{job.train_json} holds no chips: check the split and chipping settings")
    size = dataset.images[0]["width"]
    num_classes = len(dataset.categories)
    model = build_detector(job.model, num_classes, size, hp["pretrained"], job.weights_file)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    iterations = hp["iterations"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(hp["warmup_iterations"], iterations))
    amp = bool(hp["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    # Per-iteration losses stay on the device until a log line or checkpoint needs them: one
    # synchronisation per interval instead of one per loss per iteration.
    history, window, loss_names, elapsed_before, start = [], [], [], 0.0, 0
    state = TorchvisionBackend().resume(job)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank], device)
        elif lead:
            log.warning("checkpoint was written by %d process(es), this run has %d: random "
                        "states are not restored", len(state["rng"]), world)
        history, loss_names = state["history"], state["loss_names"]
        window = [torch.tensor(values, device=device) for values in state["window"]]
        elapsed_before, start = state["seconds"], state["iteration"]
        if lead:
            log.info("resuming from the checkpoint at iteration %d/%d in %s", start, iterations,
                     job.checkpoints.describe())
    elif lead and job.checkpoints is not None:
        log.info("no checkpoint in %s: starting at iteration 0", job.checkpoints.describe())
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    workers = loader_workers(job.threads, world, device)
    sampler = SeededBatches(len(dataset), hp["batch_size"], hp["seed"], start, rank, world,
                            hp["augment"])
    batches = iter(torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
        persistent_workers=workers > 0, generator=loader_generator(hp["seed"])))
    if lead:
        log.info("training %s on %d chips, %d classes, %d px, iterations %d..%d, device %s x%d, "
                 "AMP %s, %d loader worker(s) per process", job.model, len(dataset), num_classes,
                 size, start, iterations, device.type, world, "on" if amp else "off", workers)
    began = time.perf_counter()
    for step in range(start, iterations):
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = model_targets(model, targets, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            losses = trained(images, targets)
            loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, hp["clip_grad_norm"])
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        done = step + 1
        checkpoint_now = job.checkpoints is not None and job.checkpoint_every and \
            done % job.checkpoint_every == 0 and done < iterations
        log_now = done % hp["log_interval"] == 0 or done == iterations
        if lead:
            loss_names = loss_names or ["loss", *losses]
            window.append(torch.stack([loss.detach().float()] +
                                      [v.detach().float() for v in losses.values()]))
        if lead and (log_now or checkpoint_now):
            means = torch.stack(window).mean(0)
            if not torch.isfinite(means).all():
                raise NadirError(
                    f"{job.model}: the loss became {means[0].item()} between iterations "
                    f"{done - len(window) + 1} and {done}; lower the learning rate (now "
                    f"{hp['lr']}) or lengthen the warm-up")
        if lead and log_now:
            seconds = time.perf_counter() - began
            per_iteration = seconds / (done - start)
            entry = {"iteration": done, "lr": scheduler.get_last_lr()[0],
                     "seconds": round(elapsed_before + seconds, 2),
                     "images_per_second": round(hp["batch_size"] * world / per_iteration, 2)}
            entry |= dict(zip(loss_names, means.tolist(), strict=True))
            history.append(entry)
            window = []
            log.info("iteration %d/%d (%.0f%%)  loss %.4f  lr %.2e  %.2fs/it  %.1f img/s  "
                     "ETA %.0fs", done, iterations, 100 * done / iterations, entry["loss"],
                     entry["lr"], per_iteration, entry["images_per_second"],
                     per_iteration * (iterations - done))
        if checkpoint_now:
            rng = [rng_state(device)]
            if world > 1:
                rng = [None] * world
                dist.all_gather_object(rng, rng_state(device))
            if lead:
                buffer = io.BytesIO()
                torch.save({"fingerprint": fingerprint(job), "iteration": done,
                            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                            "rng": rng, "history": history, "loss_names": loss_names,
                            "window": [values.tolist() for values in window],
                            "seconds": elapsed_before + time.perf_counter() - began}, buffer)
                job.checkpoints.save(done, buffer.getvalue())
    seconds = elapsed_before + time.perf_counter() - began
    if not lead:
        return {}
    job.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": job.model, "num_classes": num_classes, "image_size": size,
                "categories": dataset.categories, "state_dict": model.state_dict()},
               job.out_dir / "model.pt")
    (job.out_dir / "train_log.json").write_text(json.dumps(history, indent=1) + "\n")
    return {"seconds": round(seconds, 2), "iterations": iterations, "resumed_from": start,
            "device": device.type, "processes": world, "amp": amp, "chips": len(dataset)}


@torch.no_grad()
def predict(weights: Path, coco_json: Path, shards: list[Path], hp: dict,
            threads: int = 1) -> list[dict]:
    """COCO-format detections (xywh boxes, category ids, scores) for every image of a split."""
    torch.set_num_threads(max(1, threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_detector(saved["model"], saved["num_classes"], saved["image_size"])
    model.load_state_dict(saved["state_dict"])
    model.to(device).eval()
    if hasattr(model, "score_thresh"):
        model.score_thresh = hp["score_threshold"]
    if hasattr(model, "detections_per_img"):
        model.detections_per_img = hp["max_detections"]
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = hp["score_threshold"]
        model.roi_heads.detections_per_img = hp["max_detections"]
    dataset = ShardChips(coco_json, shards)
    # Label 0 is the background slot; sigmoid heads (RetinaNet, FCOS) can still score it.
    category_of = {label: cid for cid, label in category_labels(saved["categories"]).items()}
    results = []
    batch = hp["batch_size"]
    for first in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(first, min(first + batch, len(dataset)))]
        outputs = model([im.to(device) for im, _ in items])
        for (_, target), out in zip(items, outputs, strict=True):
            polygons = out["polygons"].tolist() if "polygons" in out else None  # oriented
            for i, (b, s, c) in enumerate(zip(out["boxes"].tolist(), out["scores"].tolist(),
                                              out["labels"].tolist(), strict=True)):
                if c not in category_of:
                    continue
                results.append({"image_id": target["image_id"], "category_id": category_of[c],
                                "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2),
                                         round(b[3] - b[1], 2)], "score": round(s, 5)})
                if polygons is not None:
                    results[-1]["polygon"] = [round(v, 2) for v in polygons[i]]
        log.info("predicted %d/%d chips", min(first + batch, len(dataset)), len(dataset))
    log.info("predicted %d detections on %d chips", len(results), len(dataset))
    return results

