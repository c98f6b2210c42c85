"""torchvision detection architectures by catalogue key, built for a class count and chip size.

Every builder starts from random init. Weights files are read by nadir only, with torch's
restricted unpickler (`nadir.train.weights.read_weights`): torchvision would unpickle them
with `weights_only=False`. For ImageNet backbones, torchvision's builder is still given the
weights enum, because it builds a different architecture for a pretrained backbone (SSDlite's
full tail, frozen BatchNorm and trainable layers of the R50 detectors); when it asks the enum
for its tensors, it gets those nadir read (`_torchvision_gets`), so it never downloads or
unpickles anything. COCO weights are loaded into every layer whose shape matches, which leaves
only the class-specific layers random.

A start from pretrained weights, ImageNet or COCO, gets the architecture torchvision builds for
one (docs/models.md, Training recipes): FrozenBatchNorm2d in the ResNet-50 and MobileNetV3
trunks of its v1 builders, and the first stages frozen (3 of 5 ResNet stages trainable, 3 of 6
MobileNetV3 stages, 4 of 5 VGG blocks); nadir's ResNet-18 FPN follows its FCOS R50 builder.
For COCO starts the builder is given the ImageNet backbone's enum as torchvision's COCO builder
is given `weights` (`is_trained`), its trunk filled with random tensors that the COCO file then
replaces. From scratch (`pretrained: none`, the sample) everything trains with plain BatchNorm.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from nadir.config.catalogue import WeightSource, entry, weight_source
from nadir.core.errors import InputError, NadirError
from nadir.train.weights import read_weights

log = logging.getLogger(__name__)


def _size_args(size: int) -> dict:
    # Without these torchvision resizes every chip to 800 px: five times slower for nothing.
    return {"min_size": size, "max_size": size}


def _detection_builder(function: str, sized: bool = True) -> Callable[..., nn.Module]:
    def build(num_classes: int, size: int, backbone_weights: str | None) -> nn.Module:
        import torchvision.models.detection as detection

        return getattr(detection, function)(weights=None, weights_backbone=backbone_weights,
                                            num_classes=num_classes + 1,
                                            **(_size_args(size) if sized else {}))
    return build


def _ssdlite(num_classes: int, size: int, backbone_weights: str | None) -> nn.Module:
    model = _detection_builder("ssdlite320_mobilenet_v3_large", sized=False)(
        num_classes, size, backbone_weights)
    # SSD's default boxes are relative to the input, so the model runs at the chip size as is.
    model.transform.fixed_size = (size, size)
    model.transform.min_size, model.transform.max_size = (size,), size
    # Channels-last tensors suit its depthwise convolutions: a training step of 4 chips of
    # 256 px on 2 CPU threads took 0.58 s instead of 0.70 s (forward 0.15 s instead of 0.25 s).
    return model.to(memory_format=torch.channels_last)


def _ssd300(num_classes: int, size: int, backbone_weights: str | None) -> nn.Module:
    # VGG-16 SSD's extra layers need their 300 px input: chips are resized to it.
    return _detection_builder("ssd300_vgg16", sized=False)(num_classes, size, backbone_weights)


def _resnet18_fpn(backbone_weights: str | None) -> nn.Module:
    """ResNet-18 under a P3-P7 feature pyramid, its trunk treated as torchvision's FCOS R50
    builder treats its ResNet-50 (fcos.py L762-766): from ImageNet weights FrozenBatchNorm2d
    and the last 3 of 5 stages trainable; from scratch plain BatchNorm, all trainable."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    pretrained = backbone_weights is not None
    trunk = resnet18(weights=backbone_weights,
                     norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d)
    return _resnet_fpn_extractor(trunk, 3 if pretrained else 5, returned_layers=[2, 3, 4],
                                 extra_blocks=LastLevelP6P7(256, 256))


def _fcos_resnet18(num_classes: int, size: int, backbone_weights: str | None) -> nn.Module:
    from torchvision.models.detection import FCOS

    return FCOS(_resnet18_fpn(backbone_weights), num_classes + 1, **_size_args(size))


def _oriented_fcos_resnet18(num_classes: int, size: int,
                            backbone_weights: str | None) -> nn.Module:
    from nadir.train.models.oriented_models import OrientedFCOS

    return OrientedFCOS(_resnet18_fpn(backbone_weights), num_classes)


class StagesWithFPN(nn.Module):
    """A classification trunk's four stages feeding a feature pyramid (for Faster R-CNN).

    `channels_last` trunks (Swin) return NHWC maps; they are turned to NCHW before the FPN.
    """

    def __init__(self, stages: nn.Module, in_channels: list[int], channels_last: bool):
        from torchvision.ops.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelMaxPool,
        )

        super().__init__()
        self.stages = stages
        self.channels_last = channels_last
        self.fpn = FeaturePyramidNetwork(in_channels, 256, extra_blocks=LastLevelMaxPool())
        self.out_channels = 256

    def forward(self, x: torch.Tensor) -> OrderedDict:
        features = OrderedDict()
        for name, stage_output in self.stages(x).items():
            features[name] = stage_output.permute(0, 3, 1, 2) if self.channels_last \
                else stage_output
        return self.fpn(features)


def _faster_rcnn_on(trunk_function: str, channels_last: bool) -> Callable[..., nn.Module]:
    def build(num_classes: int, size: int, backbone_weights: str | None) -> nn.Module:
        import torchvision.models as models
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.feature_extraction import create_feature_extractor

        trunk = getattr(models, trunk_function)(weights=backbone_weights)
        # ConvNeXt-T and Swin-T: stages 1, 3, 5, 7 of `features` give strides 4..32.
        stages = create_feature_extractor(
            trunk.features, {"1": "0", "3": "1", "5": "2", "7": "3"})
        backbone = StagesWithFPN(stages, [96, 192, 384, 768], channels_last)
        return FasterRCNN(backbone, num_classes + 1, **_size_args(size))
    return build


BUILDERS: dict[str, Callable[[int, int, str | None], nn.Module]] = {
    "ssdlite320_mobilenet_v3_large": _ssdlite,
    "ssd300_vgg16": _ssd300,
    "fcos_resnet18_fpn": _fcos_resnet18,
    "oriented_fcos_resnet18_fpn": _oriented_fcos_resnet18,
    "fcos_resnet50_fpn": _detection_builder("fcos_resnet50_fpn"),
    "retinanet_resnet50_fpn_v2": _detection_builder("retinanet_resnet50_fpn_v2"),
    "fasterrcnn_resnet50_fpn_v2": _detection_builder("fasterrcnn_resnet50_fpn_v2"),
    "fasterrcnn_mobilenet_v3_large_fpn": _detection_builder("fasterrcnn_mobilenet_v3_large_fpn"),
    "fasterrcnn_convnext_tiny_fpn": _faster_rcnn_on("convnext_tiny", channels_last=False),
    "fasterrcnn_swin_t_fpn": _faster_rcnn_on("swin_t", channels_last=True),
}


# torchvision builds SSDlite's COCO model with the reduced tail of a start without backbone
# weights (ssdlite.py: reduce_tail = weights_backbone is None), all 6 stages trainable: what
# its build without weights already is.
_COCO_BUILT_FROM_SCRATCH = {"ssdlite320_mobilenet_v3_large"}


def _random_trunk_state(weights) -> dict:
    """Random tensors for the torchvision classifier `weights` (an enum member) belongs to."""
    import torchvision.models
    from torchvision.models import get_model, get_model_weights, list_models

    name = next(n for n in list_models(module=torchvision.models)
                if get_model_weights(n) is type(weights))
    return get_model(name).state_dict()


@contextlib.contextmanager
def _torchvision_gets(state_of: Callable[..., dict], source: WeightSource,
                      weights_file: Path) -> Iterator[None]:
    """While a model is built, torchvision's request for `source`'s tensors (the public
    `WeightsEnum.get_state_dict`, which would download and unpickle the file) returns
    `state_of(weights)`; a request for any other weights is an error, never a download."""
    from torchvision.models import WeightsEnum

    def fetched_state(weights: WeightsEnum, *args, **kwargs) -> dict:
        if weights.url != source.url:
            raise NadirError(f"torchvision asked for {weights.url}, but the run's weights file "
                             f"is {weights_file} ({source.url})")
        return state_of(weights)

    original = WeightsEnum.get_state_dict
    WeightsEnum.get_state_dict = fetched_state
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = original


def load_matching(model: nn.Module, state: dict, origin: str) -> dict:
    """Copy every tensor whose name and shape match; count what was left out, and say so."""
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    shape_mismatch = sorted(k for k in state if k in own and k not in matched)
    unknown = sorted(k for k in state if k not in own)
    if not matched:
        raise NadirError(f"{origin}: no tensor matches the model; is it the right weights file?")
    model.load_state_dict(matched, strict=False)
    counts = {"loaded": len(matched), "shape_mismatch": len(shape_mismatch),
              "unknown": len(unknown), "left_random": len(own) - len(matched)}
    log.info("pretrained weights from %s: %s (different shapes, e.g. class layers: %s)",
             origin, counts, shape_mismatch[:4])
    return counts


def build_model(name: str, num_classes: int, size: int, pretrained: str = "none",
                weights_file: Path | None = None) -> nn.Module:
    """The catalogue model `name` for `num_classes` classes (no background) on `size` px chips."""
    model_entry = entry(name)
    if model_entry.backend != "torchvision":
        raise NadirError(f"model {name!r} belongs to the {model_entry.backend} backend")
    torch.set_flush_denormal(True)  # denormals made CPU backward steps up to 300x slower
    build = BUILDERS[model_entry.architecture]
    source = weight_source(name, pretrained)
    if source is None:
        return build(num_classes, size, None)
    if weights_file is None:
        raise NadirError(f"model {name!r} with pretrained: {pretrained} needs its weights file "
                         f"({source.file_name}); the fetch_weights rule provides it")
    state = read_weights(weights_file)
    if pretrained == "imagenet":
        with _torchvision_gets(lambda _: state, source, weights_file):
            try:
                return build(num_classes, size, source.torchvision_enum)
            except RuntimeError as error:  # load_state_dict's missing or unexpected keys
                raise InputError(weights_file, f"does not fit {name}'s backbone: "
                                               f"{str(error).splitlines()[0]}") from None
    backbone = model_entry.weights.get("imagenet")
    if backbone is None or model_entry.architecture in _COCO_BUILT_FROM_SCRATCH:
        model = build(num_classes, size, None)
    else:  # the architecture of a pretrained start; COCO's tensors replace the random trunk
        with _torchvision_gets(_random_trunk_state, backbone, weights_file):
            model = build(num_classes, size, backbone.torchvision_enum)
    load_matching(model, state, str(weights_file))
    return model
