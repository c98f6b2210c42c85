"""Train and predict with torchvision detection models; one loop, read top to bottom."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from nadir.training.catalogue import build_model
from nadir.training.data import ShardChips, collate

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def warmup_cosine(warmup: int, total: int):
    """Learning-rate factor: linear warm-up, then cosine decay to zero at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _batches(dataset, batch_size: int, seed: int, workers: int):
    """An endless stream of shuffled batches; the order depends only on the seed."""
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True,
                                             num_samples=10**9, generator=generator)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                         num_workers=workers, collate_fn=collate,
                                         persistent_workers=workers > 0)
    return iter(loader)


def train(model_name: str, hp: dict, train_json: Path, shards: list[Path], out_dir: Path,
          threads: int = 1) -> dict:
    """Train one model from random init; write `model.pt` and `train_log.json` to out_dir."""
    torch.manual_seed(hp["seed"])
    torch.set_num_threads(max(1, threads))
    device = pick_device()
    dataset = ShardChips(train_json, shards, augment=hp["augment"], seed=hp["seed"])
    if len(dataset) == 0:
        raise ValueError(f"{train_json} holds no chips: check the split and chipping settings")
    size = dataset.images[0]["width"]
    num_classes = len(dataset.categories)
    model = build_model(model_name, num_classes, size).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    iterations = hp["iterations"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(hp["warmup_iterations"], iterations))
    workers = 0 if device.type == "cpu" else min(8, max(1, threads - 1))
    batches = _batches(dataset, hp["batch_size"], hp["seed"], workers)
    log.info("training %s on %d chips, %d classes, %d px, %d iterations, device %s",
             model_name, len(dataset), num_classes, size, iterations, device)
    history, window, start = [], [], time.perf_counter()
    for step in range(iterations):
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)}
                   for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at iteration {step + 1}; lower the learning rate "
                f"(now {hp['lr']}) or lengthen the warm-up")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, hp["clip_grad_norm"])
        optimizer.step()
        scheduler.step()
        window.append({k: v.item() for k, v in losses.items()} | {"loss": loss.item()})
        if (step + 1) % hp["log_interval"] == 0 or step + 1 == iterations:
            elapsed = time.perf_counter() - start
            entry = {"iteration": step + 1, "lr": scheduler.get_last_lr()[0],
                     "seconds": round(elapsed, 2)}
            entry |= {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            history.append(entry)
            window = []
            eta = elapsed / (step + 1) * (iterations - step - 1)
            log.info("iteration %d/%d  loss %.4f  lr %.2e  %.2fs/it  ETA %.0fs", step + 1,
                     iterations, entry["loss"], entry["lr"], elapsed / (step + 1), eta)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model_name, "num_classes": num_classes, "image_size": size,
                "categories": dataset.categories, "state_dict": model.state_dict()},
               out_dir / "model.pt")
    (out_dir / "train_log.json").write_text(json.dumps(history, indent=1) + "\n")
    return {"seconds": round(seconds, 2), "iterations": iterations, "device": str(device),
            "chips": len(dataset)}


@torch.no_grad()
def predict(weights: Path, coco_json: Path, shards: list[Path], hp: dict,
            threads: int = 1) -> list[dict]:
    """COCO-format detections (xywh boxes, category ids, scores) for every image of a split."""
    torch.set_num_threads(max(1, threads))
    device = pick_device()
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_model(saved["model"], saved["num_classes"], saved["image_size"])
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
    results = []
    batch = hp["batch_size"]
    for first in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(first, min(first + batch, len(dataset)))]
        outputs = model([im.to(device) for im, _ in items])
        for (_, target), out in zip(items, outputs, strict=True):
            for b, s, c in zip(out["boxes"].tolist(), out["scores"].tolist(),
                               out["labels"].tolist(), strict=True):
                results.append({"image_id": target["image_id"], "category_id": int(c),
                                "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2),
                                         round(b[3] - b[1], 2)], "score": round(s, 5)})
    log.info("predicted %d detections on %d chips", len(results), len(dataset))
    return results
