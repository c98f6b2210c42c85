"""The detectron2 backend: a thin adapter from nadir's jobs to detectron2's model zoo and trainer.

What the adapter decides is kept in plain functions that need no detectron2 (and are tested
everywhere): the model zoo config of each catalogue name, the config values it sets, where
each registered record's chip lies, and the map from detectron2's contiguous class indices back
to COCO category ids. Everything that needs detectron2 imports it inside the function.

The model comes from the zoo config (yaml configs through `build_model`, lazy `.py` configs
through `instantiate`); training uses detectron2's SimpleTrainer (AMPTrainer with AMP on a GPU)
with nadir's optimiser and schedule (AdamW, warm-up then cosine), so `lr` means the same for both
backends. The split's records are registered in detectron2's DatasetCatalog in memory, each with
its chip's shard, offset and size, and the chips are read where they are as the torchvision loop
reads them (local shards by offset, S3 shards by ranged reads, read ahead): no chip is written to
disk. The records are fed in nadir's seeded batch order with nadir's symmetries
(`SeededBatches`, `random_flip_rotate`), so a resumed run sees the batches an uninterrupted one
sees, and both backends see the same augmentations.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nadir.config.catalogue import entry
from nadir.core.errors import InputError, NadirError
from nadir.storage.shards import ShardReader, cache_from_environment, chip_ranges, decode_chip
from nadir.train.backends import TrainJob, saved_chip_params
from nadir.train.provenance import base_resolved_config

if TYPE_CHECKING:
    from nadir.train.recipes import TrainingPlan

log = logging.getLogger(__name__)

INSTALL_HINT = ("detectron2 is not installed: it is not on PyPI; install it from "
                "https://github.com/facebookresearch/detectron2 at the commit the container "
                "image pins, or pick a torchvision model from the catalogue")


def require_detectron2() -> None:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise NadirError(INSTALL_HINT) from None


def zoo_config(model: str) -> str:
    """The detectron2 model zoo config a catalogue name is built from."""
    model_entry = entry(model)
    if model_entry.backend != "detectron2":
        raise NadirError(f"model {model!r} belongs to the {model_entry.backend} backend")
    return model_entry.architecture


def is_lazy(config_path: str) -> bool:
    """Python (LazyConfig) configs end in .py; the older yacs configs in .yaml."""
    return config_path.endswith(".py")


def model_overrides(model: str, num_classes: int, size: int, pretrained: str, device: str,
                    score_threshold: float = 0.05, max_detections: int = 100) -> dict:
    """The config values nadir sets on the zoo config, as {dotted key: value}.

    Yacs keys (upper case) for .yaml configs, LazyConfig paths under `model.` for .py configs.
    From scratch, every backbone stage trains and uses BatchNorm (frozen statistics are only
    meaningful for pretrained weights); the images are the chips at their own size.
    """
    config = zoo_config(model)
    scratch = pretrained == "none"
    if not is_lazy(config):
        head = "RETINANET" if "retinanet" in config else "ROI_HEADS"
        return {
            f"MODEL.{head}.NUM_CLASSES": num_classes,
            f"MODEL.{head}.SCORE_THRESH_TEST": score_threshold,
            "TEST.DETECTIONS_PER_IMAGE": max_detections,
            "MODEL.DEVICE": device,
            "MODEL.WEIGHTS": "",  # weights are loaded by the adapter from the fetched file
            "MODEL.BACKBONE.FREEZE_AT": 0 if scratch else 2,
            "MODEL.RESNETS.NORM": "BN" if scratch else "FrozenBN",
            "INPUT.MIN_SIZE_TRAIN": (size,),
            "INPUT.MAX_SIZE_TRAIN": size,
            "INPUT.MIN_SIZE_TEST": size,
            "INPUT.MAX_SIZE_TEST": size,
        }
    if "fcos" in config:
        norm = "BN" if scratch else "FrozenBN"
        return {
            "model.num_classes": num_classes,
            "model.test_score_thresh": score_threshold,
            "model.max_detections_per_image": max_detections,
            "model.backbone.bottom_up.freeze_at": 0 if scratch else 2,
            "model.backbone.bottom_up.stem.norm": norm,
            "model.backbone.bottom_up.stages.norm": norm,
        }
    if "vitdet" in config:
        return {
            "model.roi_heads.num_classes": num_classes,
            "model.roi_heads.box_predictor.test_score_thresh": score_threshold,
            "model.roi_heads.box_predictor.test_topk_per_image": max_detections,
            # Boxes only: the zoo's ViTDet is a Mask R-CNN; our labels carry no masks.
            "model.roi_heads.mask_in_features": None,
            "model.roi_heads.mask_pooler": None,
            "model.roi_heads.mask_head": None,
            "model.backbone.net.img_size": size,
            "model.backbone.square_pad": size,
        }
    raise NadirError(f"no detectron2 settings are defined for {config}")


def scheduler_milestones(plan: TrainingPlan) -> list[int]:
    """The plan's milestones as detectron2's MultiStepParamScheduler takes them: increasing,
    inside the run (a very short run may merge or drop some)."""
    return sorted({m for m in plan.milestones if 0 < m < plan.iterations})


def clipping_settings(plan: TrainingPlan) -> dict:
    """SOLVER.CLIP_GRADIENTS for the run's `clip_grad_norm` (the zoo configs' is off, as is
    every detectron2 recipe's). detectron2's `norm` clipping bounds each parameter's gradient
    norm on its own (solver/build.py `maybe_add_gradient_clipping`), not their total norm as
    nadir's loop does."""
    return {"SOLVER.CLIP_GRADIENTS.ENABLED": plan.clip_grad_norm is not None,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "norm",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": plan.clip_grad_norm or 1.0}


def solver_settings(plan: TrainingPlan) -> dict:
    """The SOLVER values nadir sets on a yaml zoo config under `recipe: reference`, so that
    detectron2's own `build_optimizer` and `build_lr_scheduler` train the run: the recipe's
    learning rate scaled to the run's batch, its length, its milestones at the same fractions
    of the run, the warm-up's iterations and the clipping. Momentum, the norm layers' weight
    decay, gamma and the warm-up's method and factor stay the config's."""
    return {
        "SOLVER.IMS_PER_BATCH": plan.global_batch,
        "SOLVER.BASE_LR": plan.lr,
        "SOLVER.WEIGHT_DECAY": plan.weight_decay,
        "SOLVER.MAX_ITER": plan.iterations,
        "SOLVER.STEPS": tuple(scheduler_milestones(plan)),
        "SOLVER.WARMUP_ITERS": plan.warmup_iterations,
        **clipping_settings(plan),
    }


def chip_train_sizes(short_sides: tuple[int, ...], max_size: int,
                     chip: int) -> tuple[tuple[int, ...], int]:
    """The reference's multi-scale resize carried to chips: its short sides as fractions of
    the largest (640-800 of 800: 0.8-1.0), times the chip size, and the long side's limit
    likewise. Chips are cut at the model's scale, so they are not enlarged to COCO's sizes."""
    top = max(short_sides)
    return tuple(round(chip * side / top) for side in short_sides), round(chip * max_size / top)


def dataset_name(dataset: str, split: str) -> str:
    return f"nadir_{dataset}_{split}"


def detectron2_checkpoint(path: Path) -> dict:
    """What detectron2's checkpointer reads from a weights file or checkpoint, read without
    unpickling anything but arrays and tensors (`nadir.train.weights`).

    detectron2 itself `pickle.load`s `.pkl` files, which runs whatever they name. The result
    is what its DetectionCheckpointer._load_file returns for the same file: model zoo `.pkl`
    files as they are, Caffe2/Detectron1 `.pkl` files as their blobs (without `_momentum`) for
    its renaming heuristics, and `.pth` files with their tensors under `model`.
    """
    from nadir.train.weights import read_pickled_arrays, read_weights

    path = Path(path)
    if path.suffix == ".pkl":
        data = read_pickled_arrays(path)
        if not isinstance(data, dict):
            raise InputError(path, f"expected a dict of arrays, got {type(data).__name__}")
        if "model" in data and "__author__" in data:
            return data
        blobs = data.get("blobs", data)
        return {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")},
                "__author__": "Caffe2", "matching_heuristics": True}
    loaded = read_weights(path)
    if not isinstance(loaded, dict):
        raise InputError(path, f"expected a dict of tensors, got {type(loaded).__name__}")
    if "model" not in loaded:
        loaded = {"model": loaded}
    loaded["matching_heuristics"] = True
    return loaded


def tensors_only_checkpointer(model, *args, **kwargs):
    """detectron2's DetectionCheckpointer, reading files through `detectron2_checkpoint`
    (its `_load_file`, the method fvcore's Checkpointer has subclasses override)."""
    from detectron2.checkpoint import DetectionCheckpointer

    class TensorsOnlyCheckpointer(DetectionCheckpointer):
        def _load_file(self, filename: str) -> dict:
            return detectron2_checkpoint(Path(filename))

    return TensorsOnlyCheckpointer(model, *args, **kwargs)


def contiguous_category_ids(categories: list[dict]) -> list[int]:
    """COCO category id of each detectron2 class index (its loader sorts the ids)."""
    return sorted(c["id"] for c in categories)


def with_chip_ranges(records: list[dict], coco_json: Path,
                     shards: list[str]) -> list[dict]:
    """detectron2's records of a COCO split (`load_coco_json` with no image root) with where
    each chip lies: `shard`, `offset`, `size`, and `file_name` its member name in the shard.

    Chips are read from the shards by these ranges (`RegisteredChips`): none is written out.
    """
    images = {im["id"]: im for im in json.loads(Path(coco_json).read_text())["images"]}
    ranges = chip_ranges(shards, list(images.values()), coco_json)
    for record in records:
        image = images[record["image_id"]]
        record["shard"], record["file_name"] = image["shard"], image["file_name"]
        record["offset"], record["size"] = ranges[(image["shard"], image["file_name"])]
    return records


def register_split(name: str, coco_json: Path, shards: list[str]) -> None:
    """Register a split's records in detectron2's DatasetCatalog, in memory (a name an
    earlier job of this process registered is replaced)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: with_chip_ranges(
        load_coco_json(str(coco_json), "", name), coco_json, shards))
    MetadataCatalog.get(name).set(json_file=str(coco_json), evaluator_type="coco")


def inside_image(boxes, classes, height: int, width: int):
    """(boxes, classes) after an augmentation: boxes clipped to the image, those left without
    area dropped with their classes, as detectron2's DatasetMapper does
    (data/detection_utils.py `transform_instance_annotations` L303, `filter_empty_instances`
    with threshold 1e-5): ViTDet's large-scale jitter crops objects partly or wholly away."""
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
    return boxes[keep], classes[keep]


class RegisteredChips:
    """detectron2 training inputs from registered dataset records (`with_chip_ranges`), keyed
    (index, symmetry code), each chip decoded from its shard's bytes.

    Replaces detectron2's DatasetMapper and its random flips: the key comes from `SeededBatches`,
    so the augmentation is a function of the seed and the step, as in the torchvision backend.
    Chips are already at the model's size; no resizing is needed. Under `recipe: reference`,
    `augmentations` (detectron2's, from the zoo config) replace nadir's symmetries, their
    random draws seeded by (seed, chip, the sampler's draw) so that a resumed run repeats them.
    The chips are read where they are, as the torchvision loop reads them (`ShardReader`:
    local shards by offset, S3 shards by ranged reads, batches read ahead).
    """

    def __init__(self, records: list[dict], reader: ShardReader, input_format: str,
                 augment: bool, augmentations: list | None = None, seed: int = 0):
        self.records, self.reader = records, reader
        self.input_format, self.augment = input_format, augment
        self.augmentations, self.seed = augmentations, seed

    def __len__(self) -> int:
        return len(self.records)

    def member(self, index: int) -> tuple[int, str, int, int]:
        """(shard index, member name, offset, size) of a record's chip."""
        record = self.records[index]
        return record["shard"], record["file_name"], record["offset"], record["size"]

    def read_ahead(self, batches: Iterable[list]) -> Iterator[list]:
        """Batches of keys with their chips' bytes fetched ahead (`keys_read_ahead`)."""
        from nadir.train.data import keys_read_ahead

        return keys_read_ahead(self.reader, self.member, batches)

    def __getitem__(self, key: tuple) -> dict:
        """`key` is (index, symmetry code), with the chip's bytes third when read ahead."""
        import numpy as np
        from detectron2.structures import Boxes, BoxMode, Instances

        from nadir.train.data import random_flip_rotate

        index, code, data = (*key, None)[:3]
        member = self.member(index)
        if data is None:
            data = self.reader.read([member])[0]
        record = self.records[index]
        pixels = torch.from_numpy(np.array(decode_chip(
            data, f"{self.reader.shards[member[0]]}: chip {member[1]}"))).permute(2, 0, 1)
        objects = [o for o in record["annotations"] if not o.get("iscrowd", 0)]
        boxes = torch.tensor([BoxMode.convert(o["bbox"], o["bbox_mode"], BoxMode.XYXY_ABS)
                              for o in objects], dtype=torch.float32).reshape(-1, 4)
        classes = torch.tensor([o["category_id"] for o in objects], dtype=torch.int64)
        if self.augmentations is not None:
            pixels, boxes = self._reference_augmented(pixels, boxes, index, code)
            boxes, classes = inside_image(boxes, classes, *pixels.shape[1:])
        elif self.augment and code:
            pixels, boxes = random_flip_rotate(pixels, boxes, code)
        height, width = pixels.shape[1:]
        instances = Instances((height, width), gt_boxes=Boxes(boxes), gt_classes=classes)
        return {"image": in_channel_order(pixels, self.input_format),
                "height": height, "width": width, "instances": instances}

    def _reference_augmented(self, pixels, boxes, index: int, code: int):
        """detectron2's augmentations (they draw from numpy's global generator) on one chip."""
        import numpy as np
        from detectron2.data import transforms as T

        np.random.seed((self.seed * 1_000_003 + index * 8 + code) % 2**32)
        item = T.AugInput(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()),
                          boxes=boxes.numpy())
        T.AugmentationList(self.augmentations)(item)
        return (torch.from_numpy(np.ascontiguousarray(item.image)).permute(2, 0, 1),
                torch.as_tensor(item.boxes, dtype=torch.float32).reshape(-1, 4))


def reference_solver(model_name: str, model, plan: TrainingPlan, config):
    """(optimiser, LR scheduler) by detectron2's own builders from the zoo config under
    `recipe: reference`: `build_optimizer` / `build_lr_scheduler` for yaml configs (with
    `solver_settings`); for LazyConfigs the config's optimiser (FCOS: SGD with no weight decay
    on norms; ViTDet: detectron2's AdamW with its layer-wise decay 0.7 and no decay on
    pos_embed) and detectron2's warm-up multi-step scheduler at the recipe's milestones."""
    from functools import partial

    from detectron2 import model_zoo
    from detectron2.config import instantiate
    from detectron2.solver import (
        LRMultiplier,
        WarmupParamScheduler,
        build_lr_scheduler,
        build_optimizer,
    )
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    if not is_lazy(zoo_config(model_name)):
        config.defrost()
        config.merge_from_list([item for pair in solver_settings(plan).items()
                                for item in pair])
        optimizer = build_optimizer(config, model)
        return optimizer, build_lr_scheduler(config, optimizer)
    if "vitdet" in zoo_config(model_name):
        from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

        lazy_optimizer = model_zoo.get_config("common/optim.py").AdamW
        lazy_optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12,
                                                       lr_decay_rate=0.7)
        lazy_optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
    else:
        lazy_optimizer = config.optimizer
    lazy_optimizer.params.model = model
    lazy_optimizer.lr = plan.lr
    lazy_optimizer.weight_decay = plan.weight_decay
    optimizer = instantiate(lazy_optimizer)
    if plan.clip_grad_norm is not None:  # clipped as build_optimizer clips the yaml configs'
        from detectron2.config import get_cfg
        from detectron2.solver.build import maybe_add_gradient_clipping

        clipping = get_cfg()
        clipping.merge_from_list([item for pair in clipping_settings(plan).items()
                                  for item in pair])
        optimizer = maybe_add_gradient_clipping(clipping, optimizer)
    milestones = scheduler_milestones(plan)
    schedule = WarmupParamScheduler(
        MultiStepParamScheduler([0.1 ** k for k in range(len(milestones) + 1)],
                                num_updates=plan.iterations, milestones=milestones),
        plan.warmup_factor, plan.warmup_iterations / plan.iterations, "linear")
    return optimizer, LRMultiplier(optimizer, multiplier=schedule, max_iter=plan.iterations)


def reference_augmentations(model_name: str, size: int, config) -> list:
    """detectron2's training augmentations of the zoo config, carried to `size` px chips
    (`chip_train_sizes`): multi-scale shortest-edge resize and horizontal flip for the yaml
    configs and FCOS; ViTDet's large-scale jitter (flip, resize 0.1-2.0, crop) at the chip
    size."""
    from detectron2.config import instantiate
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import build_augmentation

    path = zoo_config(model_name)
    if not is_lazy(path):  # the zoo's sizes: `model_overrides` set the run's to the chip's
        from detectron2 import model_zoo
        from detectron2.config import get_cfg

        zoo = get_cfg()
        zoo.merge_from_file(model_zoo.get_config_file(path))
        sides, longest = chip_train_sizes(tuple(zoo.INPUT.MIN_SIZE_TRAIN),
                                          zoo.INPUT.MAX_SIZE_TRAIN, size)
        zoo.INPUT.MIN_SIZE_TRAIN, zoo.INPUT.MAX_SIZE_TRAIN = sides, longest
        return build_augmentation(zoo, is_train=True)
    if "vitdet" in path:
        return [T.RandomFlip(horizontal=True),
                T.ResizeScale(min_scale=0.1, max_scale=2.0, target_height=size,
                              target_width=size),
                T.FixedSizeCrop(crop_size=(size, size), pad=False)]
    augmentations = config.dataloader.train.mapper.augmentations
    resize = augmentations[0]
    resize.short_edge_length, resize.max_size = chip_train_sizes(
        tuple(resize.short_edge_length), resize.max_size, size)
    return [instantiate(a) for a in augmentations]


def start_normaliser_at_first_batch(model) -> None:
    """Start a dense detector's running loss normaliser at the first batch's positive count.

    detectron2's RetinaNet and FCOS divide their losses by a running mean of the number of
    positive anchors that starts at a constant sized for COCO batches (100, 300). On chips with
    a few objects that mean takes tens of iterations to come down, and the logged loss climbs
    meanwhile although the model learns. Models without the normaliser are left alone.
    """
    update = getattr(model, "_ema_update", None)
    if update is None:
        return

    def ema_update(name: str, value: float, initial_value: float, momentum: float = 0.9):
        return update(name, value, initial_value if hasattr(model, name) else value, momentum)

    model._ema_update = ema_update


def build_detectron2_model(model: str, num_classes: int, size: int, pretrained: str,
                           device: str, **test_settings):
    """The zoo model with nadir's settings; returns (model, input_format, its config)."""
    require_detectron2()
    from detectron2 import model_zoo
    from detectron2.config import get_cfg, instantiate

    config = zoo_config(model)
    overrides = model_overrides(model, num_classes, size, pretrained, device, **test_settings)
    if not is_lazy(config):
        from detectron2.modeling import build_model

        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file(config))
        cfg.merge_from_list([item for pair in overrides.items() for item in pair])
        return build_model(cfg), cfg.INPUT.FORMAT, cfg
    lazy = model_zoo.get_config(config)
    for key, value in overrides.items():
        target = lazy
        *path, last = key.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)
    built = instantiate(lazy.model).to(device)
    return built, lazy.model.get("input_format", "BGR"), lazy


def _clip_hook(max_norm: float):
    """A detectron2 hook clipping the total gradient norm after backward, as nadir's loop does
    under `recipe: common` (`training.clip_grad_norm`); with AMP the gradients are unscaled
    first, and the GradScaler's step then does not unscale them again."""
    import torch
    from detectron2.engine import HookBase

    class ClipGradNorm(HookBase):
        def after_backward(self):
            scaler = getattr(self.trainer, "grad_scaler", None)
            if scaler is not None:
                scaler.unscale_(self.trainer.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for group in self.trainer.optimizer.param_groups for p in group["params"]],
                max_norm)
    return ClipGradNorm()


def _checkpoint_hook(checkpointer, store, every: int, total: int, history: list, device,
                     seconds: Callable[[], float]):
    """A detectron2 hook: every `every` iterations, save a checkpoint and hand it to the store.

    Besides detectron2's own state (model, optimiser, scheduler, iteration) the checkpoint holds
    what a bit-identical resume also needs: the loss log so far, torch's random state (Faster
    R-CNN samples from it) and the dense detectors' running loss normaliser, which is a plain
    attribute outside the state dict; and the training seconds so far, so that run.json's
    `seconds` covers every attempt of a resumed run.
    """
    from detectron2.engine import HookBase

    from nadir.train.loop import rng_state

    class CheckpointToStore(HookBase):
        def after_step(self):
            done = self.trainer.iter + 1
            if every and done % every == 0 and done < total:
                checkpointer.save("store_upload", nadir_history=list(history),
                                  nadir_rng=rng_state(device),
                                  nadir_loss_normalizer=getattr(self.trainer.model,
                                                                "loss_normalizer", None),
                                  nadir_seconds=seconds())
                local = Path(checkpointer.save_dir) / "store_upload.pth"
                store.save(done, local.read_bytes())
                local.unlink()

    return CheckpointToStore()


def _loss_log_hook(history: list, interval: int, total: int, images_per_step: int):
    """A detectron2 hook: mean losses and lr per interval, with progress and ETA in the log."""
    from detectron2.engine import HookBase

    class LossLog(HookBase):
        def before_train(self):
            self.began, self.first = time.perf_counter(), self.trainer.iter

        def after_step(self):
            done = self.trainer.iter + 1
            if done % interval and done != total:
                return
            storage = self.trainer.storage
            seconds = time.perf_counter() - self.began
            per_iteration = seconds / max(1, done - self.first)
            # Plain floats: detectron2's numpy scalars would not load with weights_only.
            row = {"iteration": done, "lr": float(storage.history("lr").latest()),
                   "seconds": round(seconds, 2),
                   "images_per_second": round(images_per_step / per_iteration, 2)}
            for name, values in storage.histories().items():
                if name.startswith("loss") or name == "total_loss":
                    row["loss" if name == "total_loss" else name] = float(values.avg(interval))
            history.append(row)
            log.info("iteration %d/%d (%.0f%%)  loss %.4f  lr %.2e  %.2fs/it  ETA %.0fs", done,
                     total, 100 * done / total, row["loss"], row["lr"], per_iteration,
                     per_iteration * (total - done))

    return LossLog()


class Detectron2Backend:
    name = "detectron2"

    def processes(self, job: TrainJob) -> int:
        """detectron2 trains on one device."""
        return 1

    def resume(self, job: TrainJob) -> dict | None:
        """The newest checkpoint of this job's store ({"iteration", "data"}), or None."""
        newest = job.checkpoints.newest() if job.checkpoints is not None else None
        return None if newest is None else {"iteration": newest[0], "data": newest[1]}

    def train(self, job: TrainJob) -> dict:
        require_detectron2()
        from detectron2.data import get_detection_dataset_dicts
        from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
        from detectron2.solver import get_default_optimizer_params

        from nadir.train.data import LoaderBatches, SeededBatches, as_made
        from nadir.train.loop import (
            loader_generator,
            loader_workers,
            seed_and_determinism,
            set_rng_state,
        )
        from nadir.train.recipes import lr_factor

        hp = job.hp
        determinism = seed_and_determinism(hp)
        torch.set_num_threads(max(1, job.threads))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        coco = json.loads(job.train_json.read_text())
        params = job.chip_params
        size, num_classes = params.size, len(coco["categories"])
        work = Path(tempfile.mkdtemp(prefix="nadir-detectron2-"))  # checkpoints only
        split = dataset_name(job.dataset, "train")
        register_split(split, job.train_json, job.shards)
        model, input_format, config = build_detectron2_model(job.model, num_classes, size,
                                                             hp["pretrained"], device.type)
        model.train()
        start_normaliser_at_first_batch(model)
        if job.weights_file is not None:
            # detectron2's checkpointer renames by heuristics; nadir reads the file.
            tensors_only_checkpointer(model).load(str(job.weights_file))
        plan = job.training_plan(len(coco["images"]), hp["batch_size"])
        augmentations = None
        if plan.recipe == "reference":  # detectron2's solver, schedule and augmentation
            optimizer, scheduler = reference_solver(job.model, model, plan, config)
            augmentations = reference_augmentations(job.model, size, config)
        else:
            optimizer = torch.optim.AdamW(
                get_default_optimizer_params(model, base_lr=plan.lr,
                                             weight_decay=hp["weight_decay"]),
                lr=plan.lr, weight_decay=hp["weight_decay"])
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(plan))
        resumed = self.resume(job)
        start = resumed["iteration"] if resumed is not None else 0
        # Every chip of train.json, empty ones included (detectron2 drops them by default), so
        # this backend trains on the chips the others do and that run.json counts.
        chips = RegisteredChips(get_detection_dataset_dicts([split], filter_empty=False),
                                ShardReader(job.shards, cache_from_environment()),
                                input_format, hp["augment"], augmentations, hp["seed"])
        workers = loader_workers(job.threads, 1, device)
        sampler = SeededBatches(len(chips), hp["batch_size"], hp["seed"], start,
                                augment=hp["augment"] or bool(augmentations))
        loader = torch.utils.data.DataLoader(
            LoaderBatches(chips, sampler, collate_items=list), batch_size=None,
            num_workers=workers, collate_fn=as_made, persistent_workers=workers > 0,
            generator=loader_generator(hp["seed"]))
        amp = bool(hp["amp"]) and device.type == "cuda"
        trainer = (AMPTrainer if amp else SimpleTrainer)(model, loader, optimizer)
        (work / "checkpoints").mkdir()
        saver = tensors_only_checkpointer(model, str(work / "checkpoints"),
                                          optimizer=optimizer, scheduler=scheduler,
                                          trainer=trainer)
        history: list = []
        clock = {"before": 0.0, "began": time.perf_counter()}  # seconds of earlier attempts

        def seconds() -> float:
            return clock["before"] + time.perf_counter() - clock["began"]

        trainer.register_hooks([
            hooks.IterationTimer(),
            hooks.LRScheduler(optimizer=optimizer, scheduler=scheduler),
            _loss_log_hook(history, hp["log_interval"], hp["iterations"], hp["batch_size"]),
        ] + ([_clip_hook(plan.clip_grad_norm)]  # reference: detectron2's optimiser clips
             if plan.recipe == "common" and plan.clip_grad_norm is not None else [])
          + ([_checkpoint_hook(saver, job.checkpoints, job.checkpoint_every,
                               hp["iterations"], history, device, seconds)]
             if job.checkpoints else []))
        if resumed is not None:
            local = work / "checkpoints" / f"resume_{start:09d}.pth"
            local.write_bytes(resumed["data"])
            saved = saver.load(str(local))  # model, optimiser, scheduler, iteration
            if trainer.iter + 1 != start:
                raise NadirError(f"checkpoint {start} in {job.checkpoints.describe()} holds "
                                 f"iteration {trainer.iter + 1}; remove it to start over")
            history.extend(saved.get("nadir_history", []))
            clock["before"] = saved.get("nadir_seconds", 0.0)
            set_rng_state(saved["nadir_rng"], device)
            if saved.get("nadir_loss_normalizer") is not None:
                model.loss_normalizer = saved["nadir_loss_normalizer"]
            log.info("resuming from the checkpoint at iteration %d/%d in %s", start,
                     hp["iterations"], job.checkpoints.describe())
        clock["began"] = time.perf_counter()
        try:
            trainer.train(start, hp["iterations"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        job.outputs.weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": job.model, "num_classes": num_classes,
                    "chipping": params.to_record(), "categories": coco["categories"],
                    "pretrained": hp["pretrained"],
                    "state_dict": model.state_dict()}, job.outputs.weights)
        job.outputs.train_log.write_text(json.dumps(history, indent=1) + "\n")
        return {"seconds": round(seconds(), 2), "iterations": hp["iterations"],
                "resumed_from": start, "device": device.type, "processes": 1, "amp": amp,
                "chips": len(coco["images"]), "determinism": determinism}

    def predict(self, weights: Path, coco_json: Path, shards: list[str], hp: dict,
                threads: int = 1) -> list[dict]:
        require_detectron2()

        from nadir.train.data import ShardChips
        from nadir.train.weights import read_weights

        torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        saved = read_weights(weights)
        model, input_format, _ = build_detectron2_model(
            saved["model"], saved["num_classes"], saved_chip_params(saved, weights).size,
            saved["pretrained"],
            device, score_threshold=hp["score_threshold"], max_detections=hp["max_detections"])
        model.load_state_dict(saved["state_dict"])
        model.eval()
        category_ids = contiguous_category_ids(saved["categories"])
        dataset = ShardChips(coco_json, shards)
        results = []
        with torch.no_grad():
            for items in dataset.in_order(hp["batch_size"]):
                inputs = [{"image": in_channel_order(image, input_format).to(device),
                           "height": image.shape[1], "width": image.shape[2]}
                          for image, _ in items]
                for (_, target), out in zip(items, model(inputs), strict=True):
                    instances = out["instances"].to("cpu")
                    for box, score, label in zip(instances.pred_boxes.tensor.tolist(),
                                                 instances.scores.tolist(),
                                                 instances.pred_classes.tolist(), strict=True):
                        results.append({"image_id": target["image_id"],
                                        "category_id": category_ids[label],
                                        "bbox": [round(box[0], 2), round(box[1], 2),
                                                 round(box[2] - box[0], 2),
                                                 round(box[3] - box[1], 2)],
                                        "score": round(score, 5)})
        log.info("predicted %d detections on %d chips", len(results), len(dataset))
        return results

    def resolved_config(self, job: TrainJob) -> dict:

        device = "cuda" if torch.cuda.is_available() else "cpu"
        coco = json.loads(job.train_json.read_text())
        overrides = model_overrides(job.model, len(coco["categories"]), job.chip_params.size,
                                    job.hp["pretrained"], device)
        plan = job.training_plan(len(coco["images"]), job.hp["batch_size"])
        reference = plan.recipe == "reference"
        solver = ({"solver_settings": {k: list(v) if isinstance(v, tuple) else v
                                       for k, v in solver_settings(plan).items()}}
                  if reference and not is_lazy(zoo_config(job.model)) else {})
        return base_resolved_config(job) | {"detectron2": {
            "zoo_config": zoo_config(job.model),
            "model_overrides": {k: list(v) if isinstance(v, tuple) else v
                                for k, v in overrides.items()},
            "optimizer": "detectron2's own optimiser and LR scheduler from the zoo config, at "
                         "the run's batch and length" if reference else
                         "AdamW, warm-up then cosine (nadir's schedule)",
            **solver,
            "data": "nadir's seeded batches; detectron2's augmentations of the zoo config, "
                    "carried to the chip size" if reference else
                    "nadir's seeded batches and square symmetries, chips at their own size",
            "loss_normalizer": "RetinaNet/FCOS running mean started at the first batch's "
                               "positive count (detectron2: 100 / 300)"}}


def in_channel_order(pixels, input_format: str):
    """Our CHW RGB pixels (0..255) in the channel order the detectron2 model expects."""
    return pixels.flip(0) if input_format == "BGR" else pixels


def backend(name: str = "detectron2") -> Detectron2Backend:
    """The detectron2 backend: the registry's entry point."""
    return Detectron2Backend()
