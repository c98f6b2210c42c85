"""What every backend's training loop shares: device, processes, loader, schedule, random state.

Both the torchvision loop and the detectron2 adapter use these, so that `lr`, the data order
and a resumed run's random stream mean the same whichever backend trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def device_name() -> str:
    """The device predictions and training run on here: "cuda" or "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
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


def rng_state(device: torch.device) -> dict:
    """torch's random state on the CPU and, when training there, on the GPU."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
