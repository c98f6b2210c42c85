"""The model catalogue: every model name a config may use, its backend and its builder.

Each builder takes the number of classes (without background) and the square input size, and
returns a randomly initialised model: no weights are downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    backend: str
    architecture: str
    source: str  # where its code (and, later, its weights) come from
    licence: str
    build: Callable[[int, int], nn.Module]


def _ssdlite(num_classes: int, size: int) -> nn.Module:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                          num_classes=num_classes + 1)
    # SSD's default boxes are relative to the input, so the model runs at the chip size as is.
    model.transform.fixed_size = (size, size)
    model.transform.min_size, model.transform.max_size = (size,), size
    return model


def _fcos_resnet18(num_classes: int, size: int) -> nn.Module:
    from torch import nn
    from torchvision.models import resnet18
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    trunk = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = _resnet_fpn_extractor(trunk, 5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return FCOS(backbone, num_classes + 1, min_size=size, max_size=size)


def _torchvision_builder(function: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, size: int) -> nn.Module:
        import torchvision.models.detection as detection

        return getattr(detection, function)(weights=None, weights_backbone=None,
                                            num_classes=num_classes + 1,
                                            min_size=size, max_size=size)
    return build


_TV = "torchvision (BSD-3-Clause)"
CATALOGUE: dict[str, ModelEntry] = {
    e.name: e for e in [
        ModelEntry("ssdlite320_mobilenet_v3_large", "torchvision", "SSDlite, MobileNetV3-Large",
                   _TV, "BSD-3-Clause", _ssdlite),
        ModelEntry("fcos_resnet18_fpn", "torchvision", "FCOS, ResNet-18 FPN", _TV,
                   "BSD-3-Clause", _fcos_resnet18),
        ModelEntry("fasterrcnn_mobilenet_v3_large_fpn", "torchvision",
                   "Faster R-CNN, MobileNetV3-Large FPN", _TV, "BSD-3-Clause",
                   _torchvision_builder("fasterrcnn_mobilenet_v3_large_fpn")),
    ]
}


def build_model(name: str, num_classes: int, size: int) -> nn.Module:
    if name not in CATALOGUE:
        raise KeyError(f"unknown model {name!r}; the catalogue has {sorted(CATALOGUE)}")
    import torch

    torch.set_flush_denormal(True)  # denormals made CPU backward steps up to 300x slower
    return CATALOGUE[name].build(num_classes, size)
