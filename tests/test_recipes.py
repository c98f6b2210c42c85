"""Training recipes: under `reference` each family's optimiser, parameter groups and schedule
carry the values of its published reference (docs/models.md cites each); `common` is the shared
recipe exactly as before; a length in epochs becomes iterations from the chip count and batch.

The expected values below are written out from the references (pytorch/vision
references/detection, detectron2's configs, DETR, Deformable DETR, YOLOX, mmrotate, the Swin
and ConvNeXt detection configs), not read from nadir.config.recipes.
"""

from __future__ import annotations

import json
import math

import pytest
import tiny_chips
import torch
from torch import nn

from nadir.config import model_hyperparameters
from nadir.config.catalogue import CATALOGUE
from nadir.config.recipes import RECIPES
from nadir.train.recipes import (
    ModelEMA,
    build_optimizer,
    lr_factor,
    training_plan,
    with_length,
)

CHIPS, BATCH = 16000, 32  # 500 iterations per epoch; twice the batch of most references


class Tiny(nn.Module):
    """Parameters named and typed as the references group them."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.sampling_offsets = nn.Linear(4, 2, bias=False)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(3, 2))
        self.layer_scale = nn.Parameter(torch.ones(4, 1, 1))


NAMES = ["backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias",
         "norm.weight", "norm.bias", "head.weight", "head.bias", "sampling_offsets.weight",
         "relative_position_bias_table", "layer_scale"]


def _reference_hp(model: str, **overrides) -> dict:
    config = {"training": tiny_chips.hyperparameters(recipe="reference"),
              "models": {model: {"pretrained": "none"} | overrides}}
    return model_hyperparameters(config, model)


def _groups_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """{parameter name: (lr, weight decay)} of the optimiser's groups."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: (group["lr"], group["weight_decay"])
            for group in optimizer.param_groups for p in group["params"]}


def _decays(default: float, zero: set[str]) -> dict:
    return {n: 0.0 if n in zero else default for n in NAMES}


NORMS = {"backbone.1.weight", "backbone.1.bias", "norm.weight", "norm.bias"}
BIASES = {"backbone.0.bias", "backbone.1.bias", "norm.bias", "head.bias"}
ONE_D = {"backbone.1.weight", "norm.weight"}

# model: (optimiser, lr at BATCH, momentum/betas, nesterov, {name: weight decay},
#         {name: lr factor} (others 1), reference epochs, milestones in epochs (multistep),
#         warm-up iterations at 500 per epoch, warm-up start factor, clip, EMA decay)
TORCHVISION_WARMUP = 499  # min(1000, iterations per epoch - 1), torchvision engine.py
EXPECTED = {
    # torchvision README: lr 0.15 for 8 x 24 = 192, wd 4e-5, cosine, 660 epochs
    "ssdlite320_mobilenet_v3_large": ("sgd", 0.15 * 32 / 192, 0.9, False, _decays(4e-5, set()),
                                      {}, 660, None, TORCHVISION_WARMUP, 0.001, None, None),
    # README: lr 0.002 for 8 x 4, wd 5e-4, steps 80 110 of 120
    "ssd300_vgg16": ("sgd", 0.002, 0.9, False, _decays(5e-4, set()), {}, 120, (80, 110),
                     TORCHVISION_WARMUP, 0.001, None, None),
    # PR #4961 / README FCOS: lr 0.01 for 16, wd 1e-4, steps 16 22 of 26
    "fcos_resnet50_fpn": ("sgd", 0.02, 0.9, False, _decays(1e-4, set()), {}, 26, (16, 22),
                          TORCHVISION_WARMUP, 0.001, None, None),
    "fcos_resnet18_fpn": ("sgd", 0.02, 0.9, False, _decays(1e-4, set()), {}, 26, (16, 22),
                          TORCHVISION_WARMUP, 0.001, None, None),
    # PR #5756: AdamW lr 1e-4 for 16 (kept within 4x), wd 0.05, norm wd 0
    "retinanet_resnet50_fpn_v2": ("adamw", 1e-4, (0.9, 0.999), None, _decays(0.05, NORMS), {},
                                  26, (16, 22), TORCHVISION_WARMUP, 0.001, None, None),
    # PR #5763 (from scratch): lr 0.1 for 64, wd 4e-5, steps 352 384 of 400
    "fasterrcnn_resnet50_fpn_v2": ("sgd", 0.05, 0.9, False, _decays(4e-5, set()), {}, 400,
                                   (352, 384), TORCHVISION_WARMUP, 0.001, None, None),
    "fasterrcnn_mobilenet_v3_large_fpn": ("sgd", 0.04, 0.9, False, _decays(1e-4, set()), {},
                                          26, (16, 22), TORCHVISION_WARMUP, 0.001, None, None),
    # ConvNeXt 3x: AdamW 1e-4, wd 0.05, none on 1-D params, biases and layer scale; 27 33 of 36
    "fasterrcnn_convnext_tiny_fpn": ("adamw", 1e-4, (0.9, 0.999), None,
                                     _decays(0.05, ONE_D | BIASES | {"layer_scale"}), {}, 36,
                                     (27, 33), 500, 0.001, None, None),
    # Swin 1x: AdamW 1e-4, wd 0.05, none on norm and relative_position_bias_table; 8 11 of 12
    "fasterrcnn_swin_t_fpn": ("adamw", 1e-4, (0.9, 0.999), None,
                              _decays(0.05, {"norm.weight", "norm.bias",
                                             "relative_position_bias_table"}), {}, 12, (8, 11),
                              500, 0.001, None, None),
    # mmrotate 1x: lr 0.0025 for 2, wd 1e-4, 8 11 of 12, warm-up 500 from 1/3, clip 35
    "oriented_fcos_resnet18_fpn": ("sgd", 0.0025 * 16, 0.9, False, _decays(1e-4, set()), {},
                                   12, (8, 11), 500, 1 / 3, 35.0, None),
    # detectron2: lr 0.02 (RetinaNet, FCOS 0.01) for 16, wd 1e-4, norm 0, warm-up 1000
    "d2_faster_rcnn_r50_fpn": ("sgd", 0.04, 0.9, False, _decays(1e-4, NORMS), {},
                               270000 * 16 / 118287, (210000 * 16 / 118287,
                                                      250000 * 16 / 118287), 1000, 0.001,
                               None, None),
    "d2_retinanet_r50_fpn": ("sgd", 0.02, 0.9, False, _decays(1e-4, NORMS), {},
                             270000 * 16 / 118287, (210000 * 16 / 118287,
                                                    250000 * 16 / 118287), 1000, 0.001,
                             None, None),
    "d2_fcos_r50_fpn": ("sgd", 0.02, 0.9, False, _decays(1e-4, NORMS), {}, 90000 * 16 / 118287,
                        (60000 * 16 / 118287, 80000 * 16 / 118287), 1000, 0.001, None, None),
    # ViTDet-B 100 ep: AdamW 1e-4 for 64, wd 0.1, norm 0; steps 163889 177546 of 184375, 250
    "d2_vitdet_b": ("adamw", 1e-4, (0.9, 0.999), None, _decays(0.1, NORMS), {}, 100,
                    (100 * 163889 / 184375, 100 * 177546 / 184375), 250, 0.001, None, None),
    # DETR: AdamW 1e-4, backbone 1e-5, wd 1e-4 on all, StepLR 200 of 300, no warm-up, clip 0.1
    "detr_r50": ("adamw", 1e-4, (0.9, 0.999), None, _decays(1e-4, set()),
                 {"backbone.0.weight": 0.1, "backbone.0.bias": 0.1, "backbone.1.weight": 0.1,
                  "backbone.1.bias": 0.1}, 300, (200,), 0, 1.0, 0.1, None),
    # Deformable DETR: AdamW 2e-4 (batch 32), backbone and sampling offsets x0.1, 40 of 50
    "deformable_detr_r50": ("adamw", 2e-4, (0.9, 0.999), None, _decays(1e-4, set()),
                            {"backbone.0.weight": 0.1, "backbone.0.bias": 0.1,
                             "backbone.1.weight": 0.1, "backbone.1.bias": 0.1,
                             "sampling_offsets.weight": 0.1}, 50, (40,), 0, 1.0, 0.1, None),
    # YOLOX: SGD Nesterov 0.9, 0.01 per 64 images, wd 5e-4 on weights, none on BN and biases,
    # quadratic warm-up 5 epochs, EMA 0.9998
    "yolox_s": ("sgd", 0.01 * 32 / 64, 0.9, True,
                _decays(5e-4, BIASES | {"backbone.1.weight", "norm.weight"}), {}, 300, None,
                2500, 0.0, None, 0.9998),
}
SAME_AS = {"fcos_resnet18_fpn": "fcos_resnet50_fpn", "d2_faster_rcnn_r101_fpn":
           "d2_faster_rcnn_r50_fpn", "detr_r101": "detr_r50", "yolox_m": "yolox_s",
           "yolox_l": "yolox_s", "yolox_x": "yolox_s", "yolov3": "yolox_s"}


def test_every_catalogue_model_has_a_checked_recipe():
    assert set(RECIPES) == set(CATALOGUE)
    assert set(CATALOGUE) == set(EXPECTED) | set(SAME_AS)
    for model, same in SAME_AS.items():
        assert RECIPES[model] == RECIPES[same], model


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_reference_optimiser_and_schedule_carry_the_references_values(model):
    (kind, lr, momentum, nesterov, decays, lr_factors, epochs, milestones, warmup, start,
     clip, ema) = EXPECTED[model]
    hp = with_length(_reference_hp(model, batch_size=BATCH), CHIPS, BATCH)
    assert hp["epochs"] == pytest.approx(epochs, rel=1e-3)
    plan = training_plan(model, hp, CHIPS, BATCH)
    iterations = math.ceil(epochs * CHIPS / BATCH - 1e-9)
    assert plan.iterations == hp["iterations"] == pytest.approx(iterations, abs=1)
    assert plan.lr == pytest.approx(lr)
    assert (plan.clip_grad_norm, plan.ema_decay) == (clip, ema)
    assert plan.warmup_iterations == warmup

    tiny = Tiny()
    optimizer, params = build_optimizer(tiny, plan, model, "none")
    assert len(params) == len(NAMES)
    if kind == "sgd":
        assert isinstance(optimizer, torch.optim.SGD)
        assert {(g["momentum"], g["nesterov"]) for g in optimizer.param_groups} == {
            (momentum, nesterov)}
    else:
        assert isinstance(optimizer, torch.optim.AdamW)
        assert {g["betas"] for g in optimizer.param_groups} == {momentum}
    groups = _groups_by_name(tiny, optimizer)
    assert {n: g[1] for n, g in groups.items()} == pytest.approx(decays)
    assert {n: g[0] for n, g in groups.items()} == pytest.approx(
        {n: lr * lr_factors.get(n, 1.0) for n in NAMES})

    factor = lr_factor(plan)
    if warmup:
        assert factor(0) == pytest.approx(start)
        assert factor(warmup) == pytest.approx(1.0, rel=1e-4)
    else:
        assert factor(0) == 1.0
    if milestones is not None:  # x0.1 at each milestone (a fraction of the run)
        steps = [round(plan.iterations * m / epochs) for m in milestones]
        assert plan.milestones == tuple(steps)
        for n, step in enumerate(steps, 1):
            assert factor(step - 1) == pytest.approx(0.1 ** (n - 1))
            assert factor(step) == pytest.approx(0.1 ** n)


# ConvNeXt's LearningRateDecayOptimizerConstructor (object_detection/mmcv_custom/
# layer_decay_optimizer_constructor.py, decay 0.95, num_layers 6): lr x 0.95^(7 - layer id),
# ids: stem 0, stage 0 1, downsample 1 and stage 1 2, downsample 2 3, stage 2 block b 3 + b // 3,
# downsample 3 and stage 3 6, the rest of the detector 7. Here as the exponent of 0.95 per child
# of torchvision's `features` (nadir's `backbone.stages.<child>`), stage 2 per block.
CONVNEXT_EXPONENTS = {"0": 7, "1": 6, "2": 5, "3": 5, "4": 4, "6": 1, "7": 1,
                      **{f"5.{block}": 4 - block // 3 for block in range(9)}}


def test_convnext_reference_decays_the_learning_rate_layer_by_layer():
    from nadir.train.models.torchvision_models import build_model

    model = "fasterrcnn_convnext_tiny_fpn"
    plan = training_plan(model, with_length(_reference_hp(model, batch_size=16), 1600, 16),
                         1600, 16)
    detector = build_model(model, 2, 64)
    groups = _groups_by_name(detector, build_optimizer(detector, plan, model, "none")[0])
    assert plan.lr == 1e-4 and len(groups) == sum(1 for _ in detector.parameters())
    seen = set()
    for name, (lr, decay) in groups.items():
        parts = name.split(".")
        exponent = 0
        if parts[:2] == ["backbone", "stages"]:
            key = ".".join(parts[2:4]) if parts[2] == "5" else parts[2]
            exponent = CONVNEXT_EXPONENTS[key]
            seen.add(key)
        assert lr == pytest.approx(1e-4 * 0.95 ** exponent), name
        no_decay = name.endswith("bias") or "layer_scale" in name or \
            detector.get_parameter(name).ndim == 1
        assert decay == (0.0 if no_decay else 0.05), name
    assert seen == set(CONVNEXT_EXPONENTS)
    assert groups["roi_heads.box_predictor.cls_score.weight"] == (1e-4, 0.05)
    assert groups["backbone.stages.0.0.weight"][0] == pytest.approx(1e-4 * 0.95 ** 7)


def test_ssdlite_reference_is_cosine_to_zero_over_the_run():
    plan = training_plan("ssdlite320_mobilenet_v3_large",
                         with_length(_reference_hp("ssdlite320_mobilenet_v3_large", epochs=4),
                                     1600, BATCH), 1600, BATCH)
    factor = lr_factor(plan)
    assert plan.iterations == 200
    assert factor(100) == pytest.approx(0.5)  # half way: cos(pi/2)
    assert factor(199) == pytest.approx(0.5 * (1 + math.cos(math.pi * 199 / 200)))


def test_yolox_reference_warms_quadratically_then_cosine_to_5_percent_then_flat():
    # YOLOX yoloxwarmcos: lr (step/warm-up)^2, cosine to 0.05 lr, flat for the last 15 of 300
    plan = training_plan("yolox_s", with_length(_reference_hp("yolox_s"), 1600, BATCH),
                         1600, BATCH)  # 50 iterations per epoch
    factor = lr_factor(plan)
    assert plan.iterations == 15000 and plan.warmup_iterations == 250
    assert factor(125) == pytest.approx(0.25)
    end = 15000 - 750
    assert factor(250) == pytest.approx(1.0)
    assert factor((250 + end) // 2) == pytest.approx(0.525, abs=1e-3)
    assert factor(end) == factor(14999) == pytest.approx(0.05)


def test_faster_rcnn_v2_with_pretrained_weights_takes_the_v1_readme_recipe():
    # torchvision README "Faster R-CNN ResNet-50 FPN": lr 0.02 for 16, 26 epochs, 16 22
    hp = _reference_hp("fasterrcnn_resnet50_fpn_v2", pretrained="coco")
    assert (hp["lr"], hp["lr_batch"], hp["epochs"]) == (0.02, 16, 26)


def test_reference_defaults_to_the_best_weights_and_overrides_still_win():
    config = {"training": tiny_chips.hyperparameters(recipe="reference", pretrained="auto"),
              "models": {"yolox_s": None, "fcos_resnet18_fpn": None, "detr_r50": None,
                         "fasterrcnn_resnet50_fpn_v2": {"pretrained": "none"},
                         "ssdlite320_mobilenet_v3_large": {"lr": 0.01, "iterations": 30}}}
    assert model_hyperparameters(config, "yolox_s")["pretrained"] == "coco"
    assert model_hyperparameters(config, "fcos_resnet18_fpn")["pretrained"] == "imagenet"
    assert model_hyperparameters(config, "detr_r50")["pretrained"] == "none"
    # an explicit `none` picks the from-scratch recipe (PR #5763: lr 0.1 for 64, 400 epochs)
    scratch = model_hyperparameters(config, "fasterrcnn_resnet50_fpn_v2")
    assert (scratch["pretrained"], scratch["lr"], scratch["epochs"]) == ("none", 0.1, 400)
    ssdlite = model_hyperparameters(config, "ssdlite320_mobilenet_v3_large")
    # the model's own lr and iterations win over the recipe's lr and 660 epochs
    assert (ssdlite["lr"], ssdlite["iterations"], ssdlite["epochs"]) == (0.01, 30, None)
    assert ssdlite["weight_decay"] == 4e-5


def _old_warmup_cosine(warmup: int, total: int):
    """The shared schedule as the base commit (c6697b0) defined it in nadir.train.loop."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


@pytest.mark.parametrize("model", ["detr_r50", "ssd300_vgg16", "yolox_s"])
def test_common_is_the_shared_recipe_unchanged(model):
    config = {"training": tiny_chips.hyperparameters(iterations=40, warmup_iterations=5),
              "models": {model: None}}
    hp = model_hyperparameters(config, model)
    assert hp["lr"] == CATALOGUE[model].hyperparameters.get("lr", 0.001)
    plan = training_plan(model, with_length(hp, CHIPS, BATCH), CHIPS, BATCH)
    assert (plan.iterations, plan.clip_grad_norm, plan.ema_decay) == (40, 10.0, None)
    tiny = Tiny()
    optimizer, params = build_optimizer(tiny, plan, model, "none")
    before = torch.optim.AdamW(list(Tiny().parameters()), lr=hp["lr"],
                               weight_decay=hp["weight_decay"])
    strip = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != "params"}
                     for g in before.param_groups]
    assert [id(p) for p in params] == [id(p) for p in tiny.parameters()]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(plan))
    old = _old_warmup_cosine(5, 40)
    for step in range(40):
        assert scheduler.get_last_lr()[0] == hp["lr"] * old(step)
        optimizer.step()
        scheduler.step()


def test_epochs_become_iterations_from_chips_and_batch():
    assert with_length({"epochs": 2.5, "iterations": 999}, chips=10, global_batch=4)[
        "iterations"] == 7  # ceil(2.5 x 10 / 4)
    assert with_length({"epochs": None, "iterations": 999}, 10, 4)["iterations"] == 999
    # a layer that sets iterations alone measures the run in iterations again
    config = {"training": tiny_chips.hyperparameters(epochs=3), "models": {
        "ssd300_vgg16": {"iterations": 12}, "yolox_s": None}}
    assert model_hyperparameters(config, "ssd300_vgg16")["epochs"] is None
    assert model_hyperparameters(config, "yolox_s")["epochs"] == 3


def test_model_ema_follows_yolox_ramp():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEMA(model, 0.9998, 2000)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d = 0.9998 * (1 - math.exp(-1 / 2000))
    assert ema.weights(model)["weight"].item() == pytest.approx(1 - d)


def test_run_in_epochs_records_epochs_chips_batch_and_iterations(tmp_path):
    from nadir.train import run

    data = tiny_chips.build(tmp_path / "data", chips=5, size=64)
    hp = tiny_chips.hyperparameters(recipe="reference", epochs=1.2, batch_size=2, lr=0.01,
                                    lr_batch=2, clip_grad_norm=None, log_interval=1)
    record = run(tiny_chips.train_job(data, "ssdlite320_mobilenet_v3_large", hp,
                                      tmp_path / "out", world_size=1))
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["hyperparameters"]["epochs"] == 1.2
    assert saved["hyperparameters"]["iterations"] == 3 == saved["training"]["iterations"]
    recipe = saved["recipe"]
    assert (recipe["recipe"], recipe["epochs"], recipe["chips"], recipe["global_batch"],
            recipe["iterations"], recipe["optimizer"], recipe["lr"]) == (
        "reference", 1.2, 5, 2, 3, "sgd", 0.01)
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    # Each row's lr is the next step's: torchvision's warm-up over min(1000, 3 iterations per
    # epoch - 1) = 2 steps from 0.001, times the cosine over the 3 iterations.
    warm = {1: 0.001 * 0.5 + 0.5, 2: 1.0, 3: 1.0}
    assert [row["lr"] for row in log] == pytest.approx(
        [0.01 * warm[s] * 0.5 * (1 + math.cos(math.pi * s / 3)) for s in (1, 2, 3)])


def test_models_page_has_a_recipe_table_per_model():
    from pathlib import Path

    from nadir.config.recipes import recipe_of

    page = (Path(__file__).parents[1] / "docs" / "models.md").read_text()
    recipes = page.split("## Training recipes", 1)[1].split("\n#### ")[1:]
    for model in CATALOGUE:
        section = next((s for s in recipes if f"`{model}`" in s.splitlines()[0]), None)
        assert section is not None, model
        recipe = recipe_of(model, "coco")
        assert f"| Learning rate | {recipe.lr:g} for a batch of {recipe.lr_batch} |" in section
        assert "| Values | Source |" in section, model
