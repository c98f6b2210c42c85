"""How close training comes to what the GPU can do: images per second at 1,024 px against the
device-bound ceiling, and what closes the gap, in one script.

For each model (one per family by default: torchvision Faster R-CNN, YOLOX, DETR):

- **ceiling**: the same model's forward, backward and optimiser step on one batch that is
  already on the device (no loader, no copy), repeated: what the GPU alone allows. Measured
  with AMP off, AMP float16, AMP bfloat16, channels-last memory format (with float16) and
  `torch.compile` (with float16; a model that does not compile prints why).
- **fed**: the same step fed by the training loader (`ShardChips`, `SeededBatches`,
  `DataLoader`) with 0, the default and twice the default loader workers, and with pinned
  memory and non-blocking copies, AMP float16.
- **nadir**: nadir's own training loop (the backend's `train`, AMP on), whose images per second
  cover its steps only.

Every row prints img/s and its ratio to the model's first row in this run (the ceiling with
AMP float16; on a CPU without AMP), and peak GPU memory. Without a GPU it runs a small CPU
version (128 px, few steps, no AMP or compile rows) that only checks the script works.

    python bench/gpu_ceiling.py                          # on a GPU: 1,024 px, batch 4
    python bench/gpu_ceiling.py --models yolox_s --iterations 30 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import tiny_chips  # noqa: E402
import torch  # noqa: E402

from nadir.config.catalogue import CATALOGUE  # noqa: E402
from nadir.train.backends import get_backend  # noqa: E402
from nadir.train.data import SeededBatches, ShardChips, collate, model_targets  # noqa: E402
from nadir.train.loop import loader_workers  # noqa: E402
from nadir.train.models import build_detector  # noqa: E402

MODELS = ["fasterrcnn_resnet50_fpn_v2", "yolox_s", "detr_r50"]
DTYPES = {"fp16": torch.float16, "off": None, "bf16": torch.bfloat16}  # fp16 first: the reference


def timed(step, iterations: int, device: torch.device) -> float:
    """Seconds per iteration of `step` after two untimed warm-up calls."""
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / iterations


def training_step(model, optimizer, amp, device: torch.device):
    """One forward, backward and step on (images, targets) already on `device`."""
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    def step(images, targets) -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def fresh_model(name: str, dataset: ShardChips, size: int, device: torch.device,
                channels_last: bool = False, compiled: bool = False):
    torch.manual_seed(0)
    model = build_detector(name, len(dataset.categories), size).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return (torch.compile(model) if compiled else model), optimizer


def ceiling(name: str, dataset: ShardChips, args, device: torch.device, amp,
            channels_last: bool = False, compiled: bool = False) -> float:
    """Images per second on one batch kept on the device."""
    model, optimizer = fresh_model(name, dataset, args.size, device, channels_last, compiled)
    images, targets = collate([dataset[(i, 0)] for i in range(args.batch_size)])
    images = dataset.model_inputs(images, device)
    if channels_last:
        images = [im.permute(1, 2, 0).contiguous().permute(2, 0, 1) for im in images]  # HWC
    targets = model_targets(model, targets, device)
    step = training_step(model, optimizer, amp, device)
    return args.batch_size / timed(lambda: step(images, targets), args.iterations, device)


def fed(name: str, dataset: ShardChips, args, device: torch.device, workers: int,
        pinned: bool) -> float:
    """Images per second with the training loader feeding the step (AMP float16 on a GPU)."""
    model, optimizer = fresh_model(name, dataset, args.size, device)
    loader = iter(torch.utils.data.DataLoader(
        dataset, batch_sampler=SeededBatches(len(dataset), args.batch_size, 0, augment=True),
        collate_fn=collate, num_workers=workers, pin_memory=pinned,
        persistent_workers=workers > 0))
    step = training_step(model, optimizer, amp_default(device), device)

    def fed_step() -> None:
        images, targets = next(loader)
        images = [im.to(device, non_blocking=pinned).contiguous().float() / 255.0
                  for im in images]
        step(images, model_targets(model, targets, device))
    return args.batch_size / timed(fed_step, args.iterations, device)


def nadir(name: str, data: dict, args, work: Path) -> float:
    """Images per second of nadir's training loop (its steps only), AMP on."""
    hp = tiny_chips.hyperparameters(iterations=args.iterations, batch_size=args.batch_size,
                                    amp=True, log_interval=args.iterations)
    job = tiny_chips.train_job(data, name, hp, work / name, dataset="bench",
                               threads=args.threads, world_size=1)
    result = get_backend(CATALOGUE[name].backend).train(job)
    return args.iterations * args.batch_size / result["seconds"]


def amp_default(device: torch.device):
    return torch.float16 if device.type == "cuda" else None


def rows_of(name: str, data: dict, args, device: torch.device, work: Path):
    """(case, a function returning img/s) for one model, in the order they are measured."""
    dataset = ShardChips(data["coco"], [data["shard"]], augment=True)
    cuda = device.type == "cuda"
    default_workers = loader_workers(args.threads, 1, device)
    cases = [(f"ceiling, AMP {label}", lambda a=amp: ceiling(name, dataset, args, device, a))
             for label, amp in DTYPES.items() if cuda or amp is None]
    cases.append(("ceiling, channels-last", lambda: ceiling(
        name, dataset, args, device, amp_default(device), channels_last=True)))
    if cuda:  # inductor on a CPU takes minutes for a detector: GPU runs only
        cases.append(("ceiling, torch.compile", lambda: ceiling(
            name, dataset, args, device, amp_default(device), compiled=True)))
    for workers in sorted({0, default_workers, 2 * default_workers}):
        cases.append((f"fed, {workers} loader workers",
                      lambda w=workers: fed(name, dataset, args, device, w, pinned=False)))
    if cuda:
        cases.append((f"fed, {default_workers} workers, pinned",
                      lambda: fed(name, dataset, args, device, default_workers, pinned=True)))
    cases.append(("nadir loop, AMP on" if cuda else "nadir loop",
                  lambda: nadir(name, data, args, work)))
    return cases


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--size", type=int, default=1024 if cuda else 128)
    parser.add_argument("--batch-size", type=int, default=4 if cuda else 2)
    parser.add_argument("--iterations", type=int, default=20 if cuda else 2)
    parser.add_argument("--chips", type=int, default=32 if cuda else 4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the rows here (after each row)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device("cuda" if cuda else "cpu")
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'CPU'}; torch "
          f"{torch.__version__}; {args.iterations} steps of {args.batch_size} chips of "
          f"{args.size} px (PNG), {args.threads} CPU threads", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_chips.build(Path(tmp) / "data", chips=args.chips, size=args.size)
        for name in args.models:
            reference = None
            for case, measure in rows_of(name, data, args, device, Path(tmp)):
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                try:
                    rate = measure()
                except Exception as error:  # noqa: BLE001 - one case failing must not stop the rest
                    print(f"{name:<28} {case:<34} failed: {type(error).__name__}: "
                          f"{str(error).splitlines()[0][:120]}", flush=True)
                    traceback.print_exc(limit=2)
                    continue
                reference = reference or rate  # the first row: the ceiling with AMP fp16
                memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
                print(f"{name:<28} {case:<34} {rate:8.2f} img/s  {rate / reference:6.3f} x "
                      f"ceiling  {memory:5.1f} GiB", flush=True)
                rows.append({"model": name, "case": case, "images_per_s": round(rate, 2),
                             "ratio_to_ceiling": round(rate / reference, 3),
                             "peak_gib": None if not cuda else round(memory, 2),
                             "size": args.size, "batch_size": args.batch_size})
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
