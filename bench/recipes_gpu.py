"""Reference recipes on a GPU: each backend's model trained 100 iterations at 1024 px under
`training.recipe: reference`, against the same run under `common`, in one script.

    python bench/recipes_gpu.py                          # the four backends, GPU
    python bench/recipes_gpu.py --models yolox_s --iterations 20 --size 256   # a quick look

Per model and recipe it prints the first and last logged loss (the loss must fall), images per
second over the run and the GPU's peak memory; the ratio column is reference / common images
per second (the recipes differ in optimiser, parameter groups, EMA and, for detectron2, the
data augmentation). From random init (`pretrained: none`): the device machine reaches no
network. A model that fails prints its error and the script goes on; --json is rewritten after
each row.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_chips  # noqa: E402
import torch  # noqa: E402

from nadir.config import model_hyperparameters  # noqa: E402
from nadir.config.catalogue import CATALOGUE  # noqa: E402
from nadir.train import run  # noqa: E402

MODELS = ["fasterrcnn_resnet50_fpn_v2", "detr_r50", "yolox_s", "d2_faster_rcnn_r50_fpn"]


def one_run(model: str, recipe: str, data: dict, args: argparse.Namespace, work: Path) -> dict:
    """Train `model` under `recipe`; its losses, throughput and peak GPU memory."""
    config = {"training": tiny_chips.hyperparameters(recipe=recipe, amp=args.amp),
              "models": {model: {"pretrained": "none", "iterations": args.iterations,
                                 "batch_size": args.batch_size,
                                 "log_interval": max(1, args.iterations // 5)}}}
    hp = model_hyperparameters(config, model)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    record = run(tiny_chips.train_job(data, model, hp, work / f"{model}-{recipe}",
                                      threads=args.threads, world_size=1))
    log = json.loads((work / f"{model}-{recipe}" / "train_log.json").read_text())
    return {"model": model, "backend": CATALOGUE[model].backend, "recipe": recipe,
            "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"],
            "images_per_s": round(args.iterations * args.batch_size
                                  / record["training"]["seconds"], 2),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)
            if torch.cuda.is_available() else None,
            "lr": record["recipe"]["lr"], "optimizer": record["recipe"]["optimizer"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--chips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--amp", action="store_true", help="AMP on (the recipes' default off)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"device: {device}; torch {torch.__version__}; {args.iterations} iterations of "
          f"{args.batch_size} chips of {args.size} px, AMP {'on' if args.amp else 'off'}")
    print(f"{'model':<30} {'recipe':<9} {'optimiser':<6} {'lr':>9} {'loss first':>10} "
          f"{'last':>8} {'img/s':>7} {'peak MB':>8} {'ratio':>6}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_chips.build(Path(tmp) / "data", chips=args.chips, size=args.size)
        for model in args.models:
            try:
                common = one_run(model, "common", data, args, Path(tmp))
                reference = one_run(model, "reference", data, args, Path(tmp))
            except Exception as error:  # noqa: BLE001 - one model's failure must not stop the rest
                print(f"{model:<30} failed: {type(error).__name__}: {error}", flush=True)
                traceback.print_exc()
                continue
            for row in (common, reference):
                row["ratio"] = round(row["images_per_s"] / common["images_per_s"], 3)
                print(f"{model:<30} {row['recipe']:<9} {row['optimizer']:<6} {row['lr']:>9.2e} "
                      f"{row['first_loss']:>10.4f} {row['last_loss']:>8.4f} "
                      f"{row['images_per_s']:>7.2f} {row['peak_gpu_mb'] or 0:>8} "
                      f"{row['ratio']:>6.3f}", flush=True)
                rows.append(row | {"device": device, "size": args.size,
                                   "iterations": args.iterations})
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
