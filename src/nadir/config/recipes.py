"""Reference training recipes: each family trained the way its authors train it, as data.

`training.recipe: reference` trains a model with its family's recipe below (optimiser and
parameter groups, learning rate and the batch it was set for, schedule, warm-up, length in
epochs, clipping, EMA); `common` (the default) is nadir's shared recipe (AdamW, linear warm-up,
cosine, `iterations`), kept for controlled comparisons. Every value cites the file it was read
in (docs/models.md prints these tables); values marked "proposal" have no published reference
for that exact model. This module imports no torch: the config layer reads it to resolve a run's
settings, the train stage builds the optimiser and schedule from it (`nadir.train.recipes`).

Under `reference`, the keys of `training` a recipe sets (`REFERENCE_KEYS`) take the recipe's
values over `training` and the catalogue's defaults; a model's own entry under `models`, the
dataset's `training` and `models`, and sweep cells still override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Sources, named once (docs/models.md lists them with the versions read).
_TV = "pytorch/vision references/detection"
_TV_TRAIN = f"{_TV}/train.py (defaults)"
_TV_ENGINE = f"{_TV}/engine.py (train_one_epoch warm-up)"
_TV_README = f"{_TV}/README.md"
_TVP = "torchvision 0.29.1 models/detection"
_D2 = "detectron2 @02b5c4e2"
_D2_DEFAULTS = f"{_D2} detectron2/config/defaults.py (SOLVER)"
_YOLOX = "YOLOX 0.3.0 yolox/exp/yolox_base.py"
_MMR = "mmrotate v0.3.4 configs/_base_/schedules/schedule_1x.py"
_SWIN = ("Swin-Transformer-Object-Detection configs/swin/"
         "mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_1x_coco.py")
_SWIN_BASE = "Swin-Transformer-Object-Detection configs/_base_/schedules/schedule_1x.py"
_CNX = ("ConvNeXt object_detection/configs/convnext/"
        "mask_rcnn_convnext_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco_in1k.py")
_CNX_DECAY = "ConvNeXt object_detection/mmcv_custom/layer_decay_optimizer_constructor.py"
_DETR = "facebookresearch/detr main.py"
_DDETR = "fundamentalvision/Deformable-DETR main.py"

# The keys of `training` a reference recipe sets (over `training` and the catalogue).
REFERENCE_KEYS = ("lr", "lr_batch", "weight_decay", "clip_grad_norm", "epochs")


@dataclass(frozen=True)
class Recipe:
    """One family's reference recipe. Lengths in epochs; milestones as epochs of `epochs`
    (a run of another length keeps their fractions); warm-up in iterations or epochs."""

    reference: str  # the run whose recipe this is
    optimizer: str  # "sgd" or "adamw"
    lr: float
    lr_batch: int  # the global batch `lr` was set for
    weight_decay: float
    epochs: float
    schedule: str  # "multistep", "cosine" or "yolox" (cosine to a floor, flat tail)
    milestones: tuple[float, ...] = ()  # epochs of `epochs` (multistep), gamma 0.1
    momentum: float = 0.9  # SGD only
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    norm_weight_decay: float | None = None  # None: norm layers decay like the rest
    bias_weight_decay: float | None = None  # None: biases decay like the rest
    no_decay_names: tuple[str, ...] = ()  # parameters (name contains) without weight decay
    no_decay_1d: bool = False  # every 1-D parameter without weight decay
    backbone_lr_factor: float = 1.0  # on parameters whose name contains "backbone"
    lr_factors: tuple[tuple[str, float], ...] = ()  # (name contains, lr factor)
    layer_decay: float | None = None  # ConvNeXt: lr x layer_decay^(7 - layer id of the trunk)
    warmup: str = "linear"  # "linear", "quadratic" or "none"
    warmup_iterations: int = 0  # a fixed count (0: see warmup_epochs)
    warmup_epochs: float = 0.0  # a length in epochs (YOLOX)
    warmup_per_epoch_cap: bool = False  # torchvision: at most iterations per epoch - 1
    warmup_factor: float = 0.001  # the warm-up's starting factor (linear)
    min_lr_ratio: float = 0.0  # yolox schedule: the floor, a fraction of lr
    flat_tail_epochs: float = 0.0  # yolox schedule: epochs of `epochs` at the floor at the end
    clip_grad_norm: float | None = None
    ema_decay: float | None = None  # model EMA (YOLOX: 0.9998, ramp 1 - exp(-updates / 2000))
    ema_ramp: float = 2000.0
    augmentation: str = ""  # the reference's; what nadir applies is `training.augment`
    input_size: str = ""
    frozen: str = ""
    sources: dict = field(default_factory=dict)  # item -> the file it was read in

    def describe(self) -> dict:
        """The recipe as run.json records it (its values and their sources)."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in self.__dict__.items() if k != "sources"}


def _tv_sgd(reference: str, lr: float, lr_batch: int, weight_decay: float, epochs: float,
            milestones: tuple, readme: str, builder: str, **extra) -> Recipe:
    """A torchvision detection reference run (SGD, momentum 0.9, epoch-0 warm-up)."""
    values = {"optimizer": "sgd", "lr": lr, "lr_batch": lr_batch, "weight_decay": weight_decay,
              "epochs": epochs, "schedule": "multistep" if milestones else "cosine",
              "milestones": milestones, "warmup_iterations": 1000,
              "warmup_per_epoch_cap": True, "augmentation": "horizontal flip 0.5",
              "input_size": "model default (800/1333 resize)"} | extra
    return Recipe(reference=reference, **values, sources={
        "optimizer, momentum 0.9": _TV_TRAIN,
        "lr, batch, weight decay, schedule, epochs": readme,
        "warm-up: linear from 0.001 over min(1000, iterations per epoch - 1)": _TV_ENGINE,
        "no clipping, no EMA": f"{_TV_TRAIN}; {_TV_ENGINE}",
        "augmentation": f"{_TV}/presets.py",
        "input size, frozen layers and BatchNorm": f"{_TVP}/{builder}"})


_FCOS = _tv_sgd("torchvision FCOS ResNet-50 FPN", 0.01, 16, 1e-4, 26, (16, 22),
                f"{_TV_README} 'FCOS ResNet-50 FPN'; pytorch/vision PR #4961",
                "fcos.py L370-371, L762-766",
                frozen="pretrained (ImageNet or COCO): FrozenBN, 3 of 5 stages trainable (builder)")

_YOLOX_RECIPE = Recipe(
    reference="YOLOX exps/default (yolox_base)", optimizer="sgd", lr=0.01, lr_batch=64,
    nesterov=True, weight_decay=5e-4, norm_weight_decay=0.0, bias_weight_decay=0.0,
    epochs=300, schedule="yolox", warmup="quadratic", warmup_epochs=5, min_lr_ratio=0.05,
    flat_tail_epochs=15, ema_decay=0.9998,
    augmentation="mosaic 1.0, mixup 1.0, HSV, hflip 0.5, affine; off in the last 15 epochs "
                 "(not reproduced: nadir's square symmetries)",
    input_size="640, multi-scale 480-800 every 10 iterations (not reproduced)",
    frozen="nothing frozen; BN eps 1e-3, momentum 0.03",
    sources={"SGD Nesterov 0.9; groups: BN weights and biases no decay, weights 5e-4":
             f"{_YOLOX} L87-89, L263-281",
             "lr 0.01 per 64 images": f"{_YOLOX} L78",
             "quadratic warm-up 5 epochs from 0; cosine to 0.05 x lr; flat last 15 epochs":
             f"{_YOLOX} L71-82; yolox/utils/lr_scheduler.py L121-148",
             "300 epochs": f"{_YOLOX} L73",
             "EMA 0.9998, ramp 1 - exp(-updates/2000)": "yolox/core/trainer.py L172; "
                                                        "yolox/utils/ema.py L33-44",
             "no clipping": "yolox/core/trainer.py L96-123",
             "augmentation, input size": f"{_YOLOX} L34-67"})


def _d2_yaml(reference: str, lr: float, readme: str) -> Recipe:
    """A detectron2 yaml 3x config: SGD, steps 210k/250k of 270k iterations at batch 16."""
    coco_epochs = 270000 * 16 / 118287  # detectron2's "3x (~37 COCO epochs)"
    return Recipe(
        reference=reference, optimizer="sgd", lr=lr, lr_batch=16, weight_decay=1e-4,
        norm_weight_decay=0.0, epochs=coco_epochs, schedule="multistep",
        milestones=(coco_epochs * 210 / 270, coco_epochs * 250 / 270),
        warmup_iterations=1000,
        augmentation="ResizeShortestEdge (640-800, choice, max 1333) + horizontal flip",
        input_size="short side 640-800, max 1333", frozen="FREEZE_AT 2, FrozenBN (pretrained)",
        sources={"SGD 0.9, weight decay 1e-4, norm weight decay 0, warm-up 1000 x 0.001":
                 f"{_D2_DEFAULTS} L534-551",
                 "lr, batch 16": f"{_D2} configs/{readme}",
                 "steps 210000, 250000 of 270000 iterations (COCO 118287 images)":
                 f"{_D2} configs/COCO-Detection/*_3x.yaml",
                 "no clipping, no EMA": f"{_D2_DEFAULTS} L580",
                 "FREEZE_AT 2, FrozenBN; multi-scale 640-800, max 1333, flip":
                 f"{_D2_DEFAULTS} L59-68, L139, L491; configs/Base-RCNN-FPN.yaml L40-41"})


_D2_FASTER = _d2_yaml("detectron2 faster_rcnn_R_*_FPN_3x", 0.02, "Base-RCNN-FPN.yaml L35-37")
_DETR_RECIPE = Recipe(
    reference="DETR (facebookresearch/detr, published 300-epoch models)", optimizer="adamw",
    lr=1e-4, lr_batch=64, weight_decay=1e-4, backbone_lr_factor=0.1, epochs=300,
    schedule="multistep", milestones=(200,), warmup="none", clip_grad_norm=0.1,
    augmentation="hflip 0.5, multi-scale 480-800 / random crop 384-600",
    input_size="short side 480-800, max 1333",
    frozen="FrozenBN, stem + layer1 frozen on its ImageNet trunk (nadir offers no DETR "
           "weights: from scratch, plain BatchNorm, all trainable)",
    sources={"AdamW; lr 1e-4, backbone 1e-5; weight decay 1e-4 on all": f"{_DETR} L22-25, "
             "L131-139", "batch 64 (4 nodes x 8 GPUs x 2)": "detr run_with_submitit.py L17-18",
             "StepLR at 200 of 300 epochs, no warm-up": f"{_DETR} L26-27, L140",
             "clip 0.1": f"{_DETR} L28; engine.py L55",
             "FrozenBN, layer2-4 trainable; augmentation": "detr models/backbone.py L60-64, "
                                                           "L91; datasets/coco.py L115-136"})

RECIPES: dict[str, Recipe] = {
    "ssdlite320_mobilenet_v3_large": _tv_sgd(
        "torchvision SSDlite320 MobileNetV3-Large", 0.15, 192, 4e-5, 660, (),
        f"{_TV_README} 'SSDlite320 MobileNetV3-Large'; from scratch: pytorch/vision PR #6536",
        "ssdlite.py L277-285 (BN), size (320, 320)",
        augmentation="RandomIoUCrop + horizontal flip", input_size="320 x 320",
        frozen="nothing frozen; BN eps 1e-3, momentum 0.03 (builder)"),
    "ssd300_vgg16": _tv_sgd(
        "torchvision SSD300 VGG16", 0.002, 32, 5e-4, 120, (80, 110),
        f"{_TV_README} 'SSD300 VGG16'", "ssd.py L658-660, L677",
        augmentation="photometric distort, zoom out, IoU crop, horizontal flip",
        input_size="300 x 300",
        frozen="pretrained (ImageNet or COCO): 4 of 5 VGG blocks trainable (builder)"),
    "fcos_resnet50_fpn": _FCOS,
    "fcos_resnet18_fpn": _FCOS,  # proposal: torchvision has no R18 FCOS
    "retinanet_resnet50_fpn_v2": Recipe(
        reference="torchvision RetinaNet v2 (pytorch/vision PR #5756)", optimizer="adamw",
        lr=1e-4, lr_batch=16, weight_decay=0.05, norm_weight_decay=0.0, epochs=26,
        schedule="multistep", milestones=(16, 22), warmup_iterations=1000,
        warmup_per_epoch_cap=True, augmentation="multi-scale 480-800 + horizontal flip",
        input_size="short side 480-800, max 1333",
        frozen="plain BatchNorm (v2 builder); pretrained: 3 of 5 stages trainable",
        sources={"AdamW lr 1e-4 at 16, weight decay 0.05, norm weight decay 0, steps 16, 22 "
                 "of 26 epochs, multiscale": "pytorch/vision PR #5756 (training command)",
                 "warm-up": _TV_ENGINE,
                 "plain BatchNorm, 3 trainable stages when pretrained": f"{_TVP}/retinanet.py "
                                                                        "L883-896"}),
    "fasterrcnn_resnet50_fpn_v2": _tv_sgd(
        "torchvision Faster R-CNN ResNet-50 FPN (v1 README recipe; proposal for v2 "
        "with pretrained weights)", 0.02, 16, 1e-4, 26, (16, 22),
        f"{_TV_README} 'Faster R-CNN ResNet-50 FPN'", "faster_rcnn.py L172 (FasterRCNN "
        "defaults), L639-647 (v2 builder: plain BatchNorm)",
        frozen="plain BatchNorm (v2 builder); pretrained: 3 of 5 stages trainable (v1: also "
               "FrozenBN)"),
    "fasterrcnn_mobilenet_v3_large_fpn": _tv_sgd(
        "torchvision Faster R-CNN MobileNetV3-Large FPN", 0.02, 16, 1e-4, 26, (16, 22),
        f"{_TV_README} 'Faster R-CNN MobileNetV3-Large FPN'",
        "faster_rcnn.py L172 (FasterRCNN defaults), L679-683",
        frozen="pretrained (ImageNet or COCO): FrozenBN, 3 of 6 stages trainable (builder)"),
    "fasterrcnn_convnext_tiny_fpn": Recipe(
        reference="ConvNeXt-T Mask R-CNN 3x (proposal: no torchvision detection reference)",
        optimizer="adamw", lr=1e-4, lr_batch=16, weight_decay=0.05, no_decay_1d=True,
        bias_weight_decay=0.0, no_decay_names=("layer_scale",), epochs=36,
        schedule="multistep", milestones=(27, 33), warmup_iterations=500, layer_decay=0.95,
        augmentation="hflip + multi-scale 480-800 / crop (DETR-style)",
        input_size="short side 480-800, max 1333", frozen="nothing frozen",
        sources={"AdamW lr 1e-4, weight decay 0.05, steps 27, 33 of 36 epochs":
                 f"{_CNX} L70-77",
                 "no weight decay on 1-D parameters and biases":
                 f"{_CNX_DECAY} L83-88",
                 "layer-wise lr decay 0.95, num_layers 6: lr x 0.95^(7 - layer id); stem 0, "
                 "stage 0 1, downsample 1 and stage 1 2, downsample 2 3, stage 2 block b "
                 "3 + b // 3, downsample 3 and stage 3 6, outside the trunk 7":
                 f"{_CNX} L70-74; {_CNX_DECAY} L14-42, L74, L98",
                 "batch 16 (inferred: the Swin base ConvNeXt's configs inherit, 8 GPUs x 2)":
                 "Swin _base_/datasets/coco_instance.py L30-31; ConvNeXt object_detection/"
                 "README.md L5-6, L31-33",
                 "warm-up linear 500 iterations from 0.001": _SWIN_BASE,
                 "augmentation; drop path 0.4": f"{_CNX} L20, L29-67"}),
    "fasterrcnn_swin_t_fpn": Recipe(
        reference="Swin-T Mask R-CNN 1x (proposal: no torchvision detection reference)",
        optimizer="adamw", lr=1e-4, lr_batch=16, weight_decay=0.05,
        no_decay_names=("norm", "relative_position_bias_table", "absolute_pos_embed"),
        epochs=12, schedule="multistep", milestones=(8, 11), warmup_iterations=500,
        augmentation="hflip + multi-scale 480-800 / crop (DETR-style)",
        input_size="short side 480-800, max 1333", frozen="nothing frozen",
        sources={"AdamW lr 1e-4, weight decay 0.05, no decay on norm, "
                 "relative_position_bias_table, absolute_pos_embed; steps 8, 11 of 12":
                 f"{_SWIN} L64-69", "batch 16": "Swin _base_/datasets/coco_instance.py L30-31",
                 "warm-up linear 500 iterations from 0.001": _SWIN_BASE,
                 "augmentation; nothing frozen": f"{_SWIN} (train pipeline); "
                 "mmdet/models/backbones/swin_transformer.py L496"}),
    "oriented_fcos_resnet18_fpn": Recipe(
        reference="mmrotate rotated FCOS R50 le90 1x DOTA (proposal for R18)",
        optimizer="sgd", lr=0.0025, lr_batch=2, weight_decay=1e-4, epochs=12,
        schedule="multistep", milestones=(8, 11), warmup_iterations=500,
        warmup_factor=1 / 3, clip_grad_norm=35.0,
        augmentation="flips: horizontal, vertical, diagonal 0.25 each",
        input_size="1024 x 1024 patches, 200 px overlap",
        frozen="frozen_stages 1, norm_eval; nadir from ImageNet: stem + layer1 frozen, "
               "FrozenBN (BN affine frozen too)",
        sources={"SGD 0.9, weight decay 1e-4, lr 0.0025 at batch 2, steps 8, 11 of 12, "
                 "warm-up linear 500 iterations from 1/3, clip 35": f"{_MMR} L4-13",
                 "batch 2": "mmrotate configs/_base_/datasets/dotav1.py L31",
                 "flips; frozen_stages 1, norm_eval": "mmrotate configs/rotated_fcos/"
                 "rotated_fcos_r50_fpn_1x_dota_le90.py L13-20, L68-72",
                 "1024 patches, 200 overlap": "mmrotate configs/_base_/datasets/dotav1.py "
                                              "L3, L9"}),
    "d2_faster_rcnn_r50_fpn": _D2_FASTER,
    "d2_faster_rcnn_r101_fpn": _D2_FASTER,
    "d2_retinanet_r50_fpn": _d2_yaml("detectron2 retinanet_R_50_FPN_3x", 0.01,
                                     "Base-RetinaNet.yaml L18-22"),
    "d2_fcos_r50_fpn": Recipe(
        reference="detectron2 fcos_R_50_FPN_1x (LazyConfig)", optimizer="sgd", lr=0.01,
        lr_batch=16, weight_decay=1e-4, norm_weight_decay=0.0,
        epochs=90000 * 16 / 118287, schedule="multistep",  # iterations x batch / COCO images
        milestones=(60000 * 16 / 118287, 80000 * 16 / 118287),
        warmup_iterations=1000, augmentation="ResizeShortestEdge 640-800 + horizontal flip",
        input_size="short side 640-800, max 1333", frozen="freeze_at 2, FrozenBN",
        sources={"SGD lr 0.01 at 16, momentum 0.9, weight decay 1e-4, norm 0":
                 f"{_D2} configs/COCO-Detection/fcos_R_50_FPN_1x.py L1-8; "
                 "configs/common/optim.py L6-15",
                 "steps 60k, 80k of 90k, warm-up 1000 x 0.001":
                 f"{_D2} configs/common/coco_schedule.py L20-40",
                 "freeze_at 2, FrozenBN; 640-800 + flip": f"{_D2} configs/common/models/"
                 "retinanet.py L18-22; configs/common/data/coco.py L19-26"}),
    "d2_vitdet_b": Recipe(
        reference="detectron2 ViTDet mask_rcnn_vitdet_b_100ep", optimizer="adamw", lr=1e-4,
        lr_batch=64, weight_decay=0.1, norm_weight_decay=0.0, no_decay_names=("pos_embed",),
        epochs=100, schedule="multistep", warmup_iterations=250,
        milestones=(100 * 163889 / 184375, 100 * 177546 / 184375),
        augmentation="LSJ: flip, ResizeScale 0.1-2.0 at 1024, crop 1024", input_size="1024",
        frozen="nothing frozen; layer-wise lr decay 0.7 over 12 blocks (detectron2's "
               "get_vit_lr_decay_rate, applied by the detectron2 backend)",
        sources={"AdamW lr 1e-4, weight decay 0.1, norm and pos_embed 0; 184375 iterations "
                 "= 100 epochs, steps 163889, 177546, warm-up 250":
                 f"{_D2} projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py L24-40",
                 "batch 64; LSJ": f"{_D2} projects/ViTDet/configs/common/coco_loader_lsj.py "
                                  "L6-16",
                 "layer-wise decay 0.7": f"{_D2} detectron2/modeling/backbone/vit.py L506-524"}),
    "detr_r50": _DETR_RECIPE,
    "detr_r101": _DETR_RECIPE,
    "deformable_detr_r50": Recipe(
        reference="Deformable DETR configs/r50_deformable_detr.sh (main.py defaults)",
        optimizer="adamw", lr=2e-4, lr_batch=32, weight_decay=1e-4, backbone_lr_factor=0.1,
        lr_factors=(("sampling_offsets", 0.1), ("reference_points", 0.1)), epochs=50,
        schedule="multistep", milestones=(40,), warmup="none", clip_grad_norm=0.1,
        augmentation="as DETR", input_size="as DETR",
        frozen="FrozenBN, stem + layer1 frozen on its ImageNet trunk (no weights offered: "
               "from scratch, all trainable)",
        sources={"AdamW lr 2e-4, backbone x0.1, sampling_offsets/reference_points x0.1, "
                 "weight decay 1e-4, StepLR 40 of 50, clip 0.1": f"{_DDETR} L31-41, L177-210",
                 "total batch 32 (its 8-GPU example command gives 16)":
                 "Deformable-DETR README.md L55",
                 "FrozenBN, layer2-4 trainable; augmentation": "Deformable-DETR "
                 "models/backbone.py L72-76, L102; datasets/coco.py L125-146"}),
    "yolox_s": _YOLOX_RECIPE, "yolox_m": _YOLOX_RECIPE, "yolox_l": _YOLOX_RECIPE,
    "yolox_x": _YOLOX_RECIPE, "yolov3": _YOLOX_RECIPE,
}

# From scratch, Faster R-CNN v2 has a published recipe of its own (the v2 weights').
SCRATCH_RECIPES: dict[str, Recipe] = {
    "fasterrcnn_resnet50_fpn_v2": Recipe(
        reference="torchvision Faster R-CNN v2 weights (pytorch/vision PR #5763), from "
                  "scratch", optimizer="sgd", lr=0.1, lr_batch=64, weight_decay=4e-5,
        epochs=400, schedule="multistep", milestones=(352, 384), warmup_iterations=1000,
        warmup_per_epoch_cap=True, augmentation="LSJ 1024 (scale 0.1-2.0) + horizontal flip",
        input_size="1024 x 1024", frozen="plain BatchNorm (SyncBN), nothing frozen",
        sources={"SGD lr 0.1 at 64, weight decay 4e-5, steps 352, 384 of 400 epochs, LSJ":
                 "pytorch/vision PR #5763 (training command)", "warm-up": _TV_ENGINE}),
}


def recipe_of(model: str, pretrained: str) -> Recipe:
    """The reference recipe of a catalogue model trained from `pretrained`."""
    if pretrained == "none" and model in SCRATCH_RECIPES:
        return SCRATCH_RECIPES[model]
    if model not in RECIPES:
        raise KeyError(f"model {model!r} has no reference recipe")
    return RECIPES[model]


def reference_hyperparameters(model: str, pretrained: str) -> dict:
    """The `training` keys a reference recipe sets for `model` started from `pretrained`
    (resolved: `nadir.config.catalogue.resolved_pretrained`)."""
    recipe = recipe_of(model, pretrained)
    return {"lr": recipe.lr, "lr_batch": recipe.lr_batch, "weight_decay": recipe.weight_decay,
            "clip_grad_norm": recipe.clip_grad_norm, "epochs": recipe.epochs}
