"""A run's optimiser, learning-rate schedule and weight average, from its recipe.

`training_plan` turns a run's settings, its chip count and its global batch into the concrete
numbers (learning rate after scaling, iterations, warm-up, milestones); `build_optimizer`,
`lr_factor` and `ModelEMA` make them torch objects. Under `recipe: common` these are the
shared recipe exactly (AdamW over every trainable parameter, `warmup_cosine`, clipping at
`clip_grad_norm`); under `reference`, the family's (`nadir.config.recipes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nadir.config.recipes import Recipe, recipe_of

# Parameters of these layers are "norm" parameters (torchvision's split_normalization_params).
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
               nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


def iterations_for(epochs: float, chips: int, global_batch: int) -> int:
    """Optimiser steps of `epochs` passes over `chips` chips in batches of `global_batch`."""
    return max(1, math.ceil(epochs * chips / global_batch))


def scaled_lr(lr: float, lr_batch: int | None, global_batch: int, optimizer: str) -> float:
    """`lr`, set for `lr_batch` images, scaled linearly to `global_batch`. AdamW rates are
    kept within 4x of their batch (DETR trains at 16 and 64 images with one rate)."""
    if lr_batch is None:
        return lr
    factor = global_batch / lr_batch
    if optimizer == "adamw" and 0.25 <= factor <= 4:
        return lr
    return lr * factor


def with_length(hp: dict, chips: int, global_batch: int) -> dict:
    """`hp` with `iterations` computed from `epochs` when the run is measured in epochs."""
    if hp.get("epochs") is None:
        return hp
    return {**hp, "iterations": iterations_for(hp["epochs"], chips, global_batch)}


@dataclass(frozen=True)
class TrainingPlan:
    """The numbers a run trains with: what run.json records under `recipe`."""

    recipe: str  # "common" or "reference"
    optimizer: str
    lr: float  # after scaling to the global batch
    lr_batch: int | None
    global_batch: int
    weight_decay: float
    iterations: int
    epochs: float | None
    chips: int
    warmup: str
    warmup_iterations: int
    warmup_factor: float
    schedule: str
    milestones: tuple[int, ...]  # iterations
    min_lr_ratio: float
    flat_tail_iterations: int
    clip_grad_norm: float | None
    ema_decay: float | None
    ema_ramp: float
    reference: str | None  # the run whose recipe this is

    def record(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def training_plan(model: str, hp: dict, chips: int, global_batch: int) -> TrainingPlan:
    """The concrete recipe of a run of `model` with settings `hp` (`with_length` applied)."""
    iterations = hp["iterations"]
    if hp["recipe"] == "common":
        return TrainingPlan(
            "common", "adamw", scaled_lr(hp["lr"], hp.get("lr_batch"), global_batch, "adamw"),
            hp.get("lr_batch"), global_batch, hp["weight_decay"], iterations, hp.get("epochs"),
            chips, "linear", hp["warmup_iterations"], 0.0, "cosine", (), 0.0,
            0, hp["clip_grad_norm"], None, 0.0, None)
    recipe = recipe_of(model, hp["pretrained"])
    per_epoch = chips / global_batch
    warmup = recipe.warmup_iterations or math.ceil(recipe.warmup_epochs * per_epoch)
    if recipe.warmup_per_epoch_cap:  # torchvision warms up within the first epoch
        warmup = min(warmup, math.ceil(per_epoch) - 1)
    warmup = 0 if recipe.warmup == "none" else max(0, min(warmup, iterations))

    def at(epoch: float) -> int:  # an epoch of the reference's length, in this run's steps
        return round(iterations * epoch / recipe.epochs)

    return TrainingPlan(
        "reference", recipe.optimizer,
        scaled_lr(hp["lr"], hp["lr_batch"], global_batch, recipe.optimizer), hp["lr_batch"],
        global_batch, hp["weight_decay"], iterations, hp.get("epochs"), chips, recipe.warmup,
        warmup, 0.0 if recipe.warmup == "quadratic" else recipe.warmup_factor, recipe.schedule,
        tuple(at(m) for m in recipe.milestones), recipe.min_lr_ratio, at(recipe.flat_tail_epochs),
        hp["clip_grad_norm"], recipe.ema_decay, recipe.ema_ramp, recipe.reference)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Learning-rate factor of the common recipe: linear warm-up, then cosine to 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def lr_factor(plan: TrainingPlan) -> Callable[[int], float]:
    """The learning-rate factor of step `step` (0-based), as LambdaLR takes it."""
    if plan.recipe == "common":
        return warmup_cosine(plan.warmup_iterations, plan.iterations)
    total, warm = plan.iterations, plan.warmup_iterations

    def warming(step: int) -> float:
        if step >= warm:
            return 1.0
        if plan.warmup == "quadratic":  # YOLOX: lr x (step / warm-up)^2, from 0
            return (step / warm) ** 2
        alpha = step / warm  # torchvision's LinearLR, detectron2's WarmupParamScheduler
        return plan.warmup_factor * (1 - alpha) + alpha

    def main(step: int) -> float:
        if plan.schedule == "multistep":
            return 0.1 ** sum(step >= m for m in plan.milestones)
        if plan.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * step / total))
        # yolox: cosine from the warm-up's end to the floor, then flat at the floor
        floor, end = plan.min_lr_ratio, total - plan.flat_tail_iterations
        if step < warm:
            return 1.0
        if step >= end:
            return floor
        progress = (step - warm) / max(1, end - warm)
        return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * progress))

    return lambda step: warming(step) * main(step)


def _decay_of(name: str, parameter: nn.Parameter, module: nn.Module, recipe: Recipe,
              weight_decay: float) -> float:
    """A parameter's weight decay under `recipe`: norm layers, biases and named exceptions
    as the reference groups them."""
    if recipe.norm_weight_decay is not None and isinstance(module, NORM_LAYERS):
        return recipe.norm_weight_decay
    if recipe.bias_weight_decay is not None and name.endswith("bias"):
        return recipe.bias_weight_decay
    if any(part in name for part in recipe.no_decay_names):
        return 0.0
    if recipe.no_decay_1d and parameter.ndim <= 1:
        return 0.0
    return weight_decay


# ConvNeXt's layer ids (object_detection/mmcv_custom/layer_decay_optimizer_constructor.py
# L14-42, num_layers 6) for the children of torchvision's `features` as nadir's trunk names them
# (`backbone.stages.<child>.`): 0 stem, 1 stage 0, 2 downsample and stage 1, 4 downsample,
# 5 stage 2 (by block, below), 6 downsample and 7 stage 3.
_CONVNEXT_LAYER_IDS = {0: 0, 1: 1, 2: 2, 3: 2, 4: 3, 6: 6, 7: 6}
_CONVNEXT_TOP_LAYER = 7  # everything outside the trunk: lr x 1


def convnext_layer_id(name: str) -> int:
    """The layer id ConvNeXt's LearningRateDecayOptimizerConstructor gives the parameter
    `name` of nadir's ConvNeXt-T Faster R-CNN: stage 2's nine blocks count 3, 4, 5 by threes."""
    parts = name.split(".")
    if parts[:2] != ["backbone", "stages"]:
        return _CONVNEXT_TOP_LAYER
    child = int(parts[2])
    return 3 + int(parts[3]) // 3 if child == 5 else _CONVNEXT_LAYER_IDS[child]


def _lr_factor_of(name: str, recipe: Recipe) -> float:
    if recipe.layer_decay is not None:
        return recipe.layer_decay ** (_CONVNEXT_TOP_LAYER - convnext_layer_id(name))
    for part, factor in recipe.lr_factors:
        if part in name:
            return factor
    return recipe.backbone_lr_factor if "backbone" in name else 1.0


def parameter_groups(model: nn.Module, recipe: Recipe, lr: float,
                     weight_decay: float) -> list[dict]:
    """The trainable parameters in groups of one (lr, weight decay), each named by them."""
    groups: dict[tuple[float, float], list] = {}
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            full = f"{module_name}.{name}" if module_name else name
            key = (lr * _lr_factor_of(full, recipe),
                   _decay_of(full, parameter, module, recipe, weight_decay))
            groups.setdefault(key, []).append(parameter)
    return [{"params": params, "lr": group_lr, "weight_decay": decay,
             "name": f"lr {group_lr:g}, weight decay {decay:g}"}
            for (group_lr, decay), params in groups.items()]


def build_optimizer(model: nn.Module, plan: TrainingPlan,
                    model_name: str, pretrained: str) -> tuple[torch.optim.Optimizer, list]:
    """(the optimiser, every trainable parameter) of a run."""
    params = [p for p in model.parameters() if p.requires_grad]
    if plan.recipe == "common":
        return torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay), params
    recipe = recipe_of(model_name, pretrained)
    groups = parameter_groups(model, recipe, plan.lr, plan.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=plan.lr, betas=recipe.betas), params
    return torch.optim.SGD(groups, lr=plan.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov), params


class ModelEMA:
    """An exponential moving average of a model's floating-point state (YOLOX's ModelEMA:
    decay `decay` x (1 - exp(-updates / ramp)), BatchNorm statistics included)."""

    def __init__(self, model: nn.Module, decay: float, ramp: float = 2000.0):
        self.decay, self.ramp, self.updates = decay, ramp, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].mul_(d).add_(value.detach(), alpha=1 - d)

    def weights(self, model: nn.Module) -> dict:
        """The model's state dict with the averaged values."""
        return {k: self.shadow.get(k, v) for k, v in model.state_dict().items()}

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)


def model_ema(model: nn.Module, plan: TrainingPlan) -> ModelEMA | None:
    """The run's weight average, where its recipe keeps one."""
    return None if plan.ema_decay is None else ModelEMA(model, plan.ema_decay, plan.ema_ramp)
