"""Training throughput: images per second per backend and model, AMP on and off, and nadir's
training loop against a bare loop over the same model and data, in one script.

    python bench/train_gpu.py                       # GPU when there is one, else a small CPU run
    python bench/train_gpu.py --models ssdlite320_mobilenet_v3_large --iterations 50 --size 512

The bare loop is what anyone would write: the same chips, batch size, model, AdamW and loader
worker count; forward, backward, step; nothing else. nadir's loop adds the scheduler, gradient
clipping, loss logging, seeded batches and (here, unless --checkpoint-every is set) no
checkpoints. Both are timed from their first step (included) to their last, with the GPU
synchronised at the end; an untimed two-step bare run per model warms the process first (CUDA
context, allocator, cuDNN).
Ratio = nadir / bare (target at least 0.95). AMP applies on GPUs only; on the CPU that column
says n/a. detectron2 rows give nadir's adapter throughput only (no bare loop is written for it).
A model that fails prints its error and the script goes on; --json is rewritten after each row,
so a run stopped at a time limit keeps the rows it finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_chips  # noqa: E402
import torch  # noqa: E402

from nadir.config.catalogue import CATALOGUE  # noqa: E402
from nadir.train.backends import get_backend  # noqa: E402
from nadir.train.checkpoints import LocalCheckpoints  # noqa: E402
from nadir.train.data import SeededBatches, ShardChips, collate, model_targets  # noqa: E402
from nadir.train.loop import loader_workers  # noqa: E402
from nadir.train.models import build_detector  # noqa: E402

# One or more models of each backend; the shared loop's backends (torchvision, transformers,
# yolox) get a bare loop beside them.
GPU_MODELS = ["ssdlite320_mobilenet_v3_large", "fasterrcnn_resnet50_fpn_v2",
              "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "detr_r50", "yolox_s",
              "d2_faster_rcnn_r50_fpn"]
CPU_MODELS = ["ssdlite320_mobilenet_v3_large", "fcos_resnet18_fpn"]
SHARED_LOOP = ("torchvision", "transformers", "yolox")


def bare_loop(model_name: str, data: dict, hp: dict, threads: int, amp: bool) -> float:
    """Images per second of the plainest loop over the same chips and model."""
    torch.manual_seed(hp["seed"])
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = ShardChips(data["coco"], [data["shard"]], augment=hp["augment"])
    model = build_detector(model_name, len(dataset.categories), dataset.images[0]["width"])
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loader = iter(torch.utils.data.DataLoader(
        dataset, batch_sampler=SeededBatches(len(dataset), hp["batch_size"], hp["seed"],
                                             augment=hp["augment"]),
        collate_fn=collate, num_workers=loader_workers(threads, 1, device)))

    def step() -> None:
        images, targets = next(loader)
        images = dataset.model_inputs(images, device)
        targets = model_targets(model, targets, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    began = time.perf_counter()
    for _ in range(hp["iterations"]):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return hp["iterations"] * hp["batch_size"] / (time.perf_counter() - began)


def nadir_loop(model_name: str, data: dict, hp: dict, threads: int, work: Path,
               checkpoint_every: int) -> float:
    """Images per second of nadir's own loop (the backend's `seconds` covers its steps only)."""
    job = tiny_chips.train_job(data, model_name, hp, work / model_name, dataset="bench",
                               threads=threads, world_size=1, checkpoint_every=checkpoint_every,
                               checkpoints=LocalCheckpoints(work / "ck" / model_name)
                               if checkpoint_every else None)
    result = get_backend(CATALOGUE[model_name].backend).train(job)
    return hp["iterations"] * hp["batch_size"] / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--models", nargs="+", default=GPU_MODELS if cuda else CPU_MODELS)
    parser.add_argument("--iterations", type=int, default=40 if cuda else 10)
    parser.add_argument("--batch-size", type=int, default=8 if cuda else 2)
    parser.add_argument("--size", type=int, default=512 if cuda else 128)
    parser.add_argument("--chips", type=int, default=32 if cuda else 8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per loop")
    parser.add_argument("--amp", choices=["both", "on", "off"], default="both",
                        help="AMP settings to measure on a GPU")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.cuda.get_device_name(0) if cuda else f"CPU, {args.threads} threads"
    print(f"device: {device}; torch {torch.__version__}; {args.iterations} iterations of "
          f"{args.batch_size} chips of {args.size} px; median of {args.repeats} alternating runs")
    print(f"{'backend':<12} {'model':<36} {'AMP':<4} {'nadir img/s':>11} {'bare img/s':>10} "
          f"{'ratio':>6}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_chips.build(Path(tmp) / "data", chips=args.chips, size=args.size)
        for model_name in args.models:
            try:
                for row in bench_model(model_name, data, args, device, Path(tmp)):
                    rows.append(row)
                    if args.json:
                        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
            except Exception as error:  # noqa: BLE001 - one model's failure must not stop the rest
                print(f"{CATALOGUE[model_name].backend:<12} {model_name:<36} failed: "
                      f"{type(error).__name__}: {error}", flush=True)
                traceback.print_exc()


def bench_model(model_name: str, data: dict, args: argparse.Namespace, device: str,
                tmp: Path):
    """Yield one row per AMP setting for `model_name`, printing each as it is measured."""
    cuda = torch.cuda.is_available()
    backend = CATALOGUE[model_name].backend
    if backend == "detectron2":
        import importlib.util

        if importlib.util.find_spec("detectron2") is None:
            print(f"{backend:<12} {model_name:<36} skipped: detectron2 not importable")
            return
    bare_too = backend in SHARED_LOOP
    settings = {"both": [False, True], "on": [True], "off": [False]}[args.amp]
    for amp in (settings if cuda else [False]):
        hp = tiny_chips.hyperparameters(iterations=args.iterations, batch_size=args.batch_size,
                                        amp=amp, log_interval=args.iterations)
        if bare_too:
            bare_loop(model_name, data, hp | {"iterations": 2}, args.threads, amp)
        # Alternate the two loops and keep the median of each: on a shared machine the load
        # changes from one minute to the next.
        nadirs, bares = [], []
        for repeat in range(args.repeats):
            nadirs.append(nadir_loop(model_name, data, hp, args.threads,
                                     tmp / f"{amp}-{repeat}", args.checkpoint_every))
            if bare_too:
                bares.append(bare_loop(model_name, data, hp, args.threads, amp))
        nadir = statistics.median(nadirs)
        bare = statistics.median(bares) if bares else None
        ratio = nadir / bare if bare else None
        amp_label = ("on" if amp else "off") if cuda else "n/a"
        print(f"{backend:<12} {model_name:<36} {amp_label:<4} {nadir:>11.2f} "
              f"{bare or float('nan'):>10.2f} {ratio or float('nan'):>6.3f}", flush=True)
        yield {"backend": backend, "model": model_name, "amp": amp if cuda else None,
               "nadir_images_per_s": round(nadir, 2), "bare_images_per_s": bare and round(bare, 2),
               "ratio": ratio and round(ratio, 3), "device": device,
               "iterations": args.iterations, "batch_size": args.batch_size, "size": args.size}


if __name__ == "__main__":
    main()
