"""A tiny chip dataset for training tests: one tar shard and its COCO file, built from a seed.

Two classes, drawn so a detector can tell them apart at once: bright red squares (class 1) and
dark blue bars (class 2) on grey noise, one to three objects per chip.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from nadir.raster.chip_params import ChipParams
from nadir.storage.shards import add_member

CATEGORIES = [{"id": 1, "name": "red-square"}, {"id": 2, "name": "blue-bar"}]


def build(directory: Path, chips: int = 4, size: int = 64, seed: int = 0,
          category_ids: tuple[int, int] = (1, 2), overlap: int = 0) -> dict[str, Path]:
    """Write shard-000.tar, coco.json and manifest.json under `directory`; return their paths.

    `category_ids` renumbers the two classes (datasets such as xView number them with gaps);
    the manifest records the chips as cut `size` px with `overlap`.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    shard = directory / "shard-000.tar"
    images, annotations = [], []
    with tarfile.open(shard, "w") as tar:
        for number in range(chips):
            pixels = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
            for _ in range(rng.integers(1, 4)):
                category = int(rng.integers(1, 3))
                w, h = (size // 4, size // 4) if category == 1 else (size // 3, size // 8)
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                pixels[y:y + h, x:x + w] = (230, 30, 30) if category == 1 else (20, 20, 120)
                annotations.append({"id": len(annotations) + 1, "image_id": number + 1,
                                    "category_id": category_ids[category - 1],
                                    "bbox": [x, y, w, h],
                                    "area": w * h, "iscrowd": 0})
            data = io.BytesIO()
            Image.fromarray(pixels).save(data, format="PNG")
            name = f"chip-{number:03d}.png"
            offset, length = add_member(tar, name, data.getvalue())
            images.append({"id": number + 1, "file_name": name, "width": size,
                           "height": size, "shard": 0, "offset": offset, "size": length})
    coco = directory / "coco.json"
    categories = [c | {"id": i} for c, i in zip(CATEGORIES, category_ids, strict=True)]
    coco.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    manifest = directory / "manifest.json"  # the chip manifest: what training reads of it
    params = ChipParams(size=size, overlap=overlap, image_format="png").to_record()
    manifest.write_text(json.dumps({"params": params, "chips": chips, "seed": seed}))
    return {"shard": shard, "coco": coco, "manifest": manifest}


def assert_scored(report: dict, data: dict, predictions: list[dict]) -> None:
    """A chip-level evaluation (nadir.evaluate.chips.evaluate) of `predictions` on the chips
    `build` wrote: every chip, object and detection counted, and COCO's numbers in their order
    (AP over IoU 0.5:0.95 and AP75 never above AP50), whatever a briefly trained model scores."""
    coco = json.loads(Path(data["coco"]).read_text())
    assert (report["images"], report["objects"], report["detections"]) == (
        len(coco["images"]), len(coco["annotations"]), len(predictions))
    metrics = report["metrics"]
    assert metrics["AP"] <= metrics["AP50"] and metrics["AP75"] <= metrics["AP50"]
    assert [row["objects"] for row in report["per_class"]] == [
        sum(a["category_id"] == c["id"] for a in coco["annotations"])
        for c in coco["categories"]]


def hyperparameters(**overrides) -> dict:
    """The schema's training defaults, shortened for tests."""
    return {"iterations": 6, "batch_size": 2, "lr": 0.001, "weight_decay": 0.0001,
            "warmup_iterations": 2, "clip_grad_norm": 10.0, "augment": True, "log_interval": 2,
            "seed": 0, "pretrained": "none", "amp": True, "recipe": "common", "epochs": None,
            "lr_batch": None, "band_mixing": False} | overrides


def model_training(model: str, **changes) -> dict:
    """`model`'s hyperparameters (its catalogue overrides applied) for a short run on the same
    chips every step: 8 steps, a loss per 4, no flips, one warm-up step, unless `changes` say."""
    from nadir.config import model_hyperparameters

    training = hyperparameters(iterations=8, log_interval=4, augment=False,
                               warmup_iterations=1) | changes
    return model_hyperparameters({"training": training, "models": {model: None}}, model)


def train_job(data: dict, model: str, hp: dict, out_dir: Path, dataset: str = "tiny",
              **settings):
    """A TrainJob over what `build` wrote; `settings` are the TrainJob's other fields."""
    from nadir.train.backends import TrainJob

    return TrainJob(dataset=dataset, model=model, hp=hp, train_json=data["coco"],
                    manifest=data["manifest"], shards=[data["shard"]],
                    outputs=train_outputs(out_dir), **settings)


def train_outputs(folder: Path):
    """A training run's four files under their usual names in one folder."""
    from nadir.train.backends import TrainOutputs

    return TrainOutputs(folder / "model.pt", folder / "train_log.json", folder / "run.json",
                        folder / "resolved_config.json")


# A tiny chip holds a handful of objects, yet an R-CNN scores 2,000 proposals and trains its box
# head on 512 sampled regions per image. Tests may keep fewer: the same layers, loss terms and
# random sampling, a fraction of the box head's work.
FEW_PROPOSALS, FEW_SAMPLED_REGIONS = 64, 32


def use_few_regions(monkeypatch, model: str) -> None:
    """Build catalogue `model` (an R-CNN) with FEW_PROPOSALS and FEW_SAMPLED_REGIONS, for the
    test that `monkeypatch` belongs to."""
    from nadir.config.catalogue import CATALOGUE
    from nadir.train.models.torchvision_models import BUILDERS

    architecture = CATALOGUE[model].architecture
    build = BUILDERS[architecture]

    def build_small(*args):
        built = build(*args)
        budget = {"training": FEW_PROPOSALS, "testing": FEW_PROPOSALS}
        built.rpn._pre_nms_top_n, built.rpn._post_nms_top_n = dict(budget), dict(budget)
        built.roi_heads.fg_bg_sampler.batch_size_per_image = FEW_SAMPLED_REGIONS
        return built

    monkeypatch.setitem(BUILDERS, architecture, build_small)


# (iterations, log interval) of the falling-loss tests on two 64 px chips: 8 steps, a loss per
# 4, but 4 steps, a loss per 2, where the loss measurably falls in 4 (seeds 0, 1, 2; 2 CPU
# threads, 2026-12-01): VGG-16 SSD (resizes every chip to 300 px, 6.5 s a step) 38.2 to 18.7,
# 23.2 to 13.8, 36.5 to 14.3 (26 s of training instead of 52); the Swin-T R-CNN 1.66 to 1.16,
# 1.73 to 1.17, 1.62 to 1.29 (11 s instead of 26); DETR 46.4 to 42.8, 45.2 to 42.3, 46.2 to 43.1
# and Deformable DETR 63.1 to 43.6, 61.0 to 43.3, 58.7 to 43.2 (4-6 s each instead of 8-11).
# Not YOLOv3: its loss rose in 4 steps with seeds 0 and 1.
FOUR_STEPS = {"ssd300_vgg16", "fasterrcnn_swin_t_fpn", "detr_r50", "deformable_detr_r50"}


def falling_loss_steps(model: str) -> tuple[int, int]:
    """(iterations, log interval) of `model`'s falling-loss test."""
    return (4, 2) if model in FOUR_STEPS else (8, 4)
