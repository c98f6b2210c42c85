"""Models that take N bands: the pretrained first convolution adapted, or a band-mixing stem.

Every catalogue model is built for 3 (RGB) bands. For chips of N bands (`ChipParams.model_bands`)
one of two things is done after the model is built and its pretrained weights loaded:

- **First-convolution adaptation** (default). The first convolution's weights of shape
  (out, 3, k, k) become (out, N, k, k): the pretrained filters of red, green and blue are kept,
  unchanged, for the bands `rgb_bands` names (`ChipParams.rgb_positions`); every other band's
  filter starts as the mean of the three RGB filters scaled by 3 / N, so the extra bands
  together start with a response of the order of one RGB band's, however many there are
  (timm's `adapt_input_conv` handles the same problem by cycling the RGB filters and scaling
  all of them by 3 / N; keeping the RGB filters unscaled here means the RGB part of an
  adapted model computes what the pretrained model computed). The model's input
  normalisation gets its RGB mean and std at the RGB places and, for the other bands, mean 0
  and the mean of the RGB stds: a band at the bottom of its range (0 after `InputScaling`)
  adds nothing, so with the extra bands at 0 the adapted model's output is the RGB model's.
  With N = 3 in RGB order nothing changes. YOLOX's first convolution (its Focus stem) sees
  four pixel phases of BGR bands: each phase is adapted alike, and the adapted model takes
  the bands in chip order (no BGR flip).
- **Band mixing** (`training.band_mixing: true`, meant for hyperspectral chips of tens of
  bands): a learnable 1x1 convolution maps the N scaled bands to 3 ahead of the unchanged
  RGB model; it starts as the identity on the RGB bands and zero on the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nadir.core.errors import NadirError
from nadir.raster.chip_params import ChipParams


@dataclass(frozen=True)
class InputBands:
    """What a model takes: `count` bands, red/green/blue at `rgb` (None: no RGB bands), and
    whether a band-mixing stem maps them to 3."""

    count: int = 3
    rgb: tuple[int, int, int] | None = (0, 1, 2)
    mixing: bool = False

    @property
    def plain(self) -> bool:
        """The catalogue's model as it is: three bands in RGB order."""
        return self.count == 3 and self.rgb == (0, 1, 2) and not self.mixing


RGB = InputBands()  # what every catalogue model takes as built


def input_bands(chips: ChipParams, mixing: bool = False) -> InputBands:
    """What a model trained on chips cut with `chips` takes (`training.band_mixing`: `mixing`)."""
    return InputBands(chips.model_bands, chips.rgb_positions, mixing and chips.model_bands != 3)


def adapted_weight(weight: torch.Tensor, bands: int, rgb: tuple[int, int, int] | None,
                   source_rgb: tuple[int, int, int] = (0, 1, 2)) -> torch.Tensor:
    """A first convolution's (out, G x 3, k, k) weight for G x `bands` inputs (G groups of
    bands, e.g. YOLOX's four pixel phases): the RGB filters at `rgb`, taken from the places
    `source_rgb` (the pretrained order: (2, 1, 0) for BGR), the other bands' the mean RGB
    filter x 3 / `bands`."""
    out, inputs, *kernel = weight.shape
    if inputs % 3:
        raise NadirError(f"a first convolution with {inputs} inputs is not an RGB one")
    grouped = weight.reshape(out, inputs // 3, 3, *kernel)
    rgb_filters = grouped[:, :, list(source_rgb)]
    new = rgb_filters.mean(2, keepdim=True).expand(-1, -1, bands, *kernel) * (3 / bands)
    new = new.clone()
    if rgb is not None:
        new[:, :, list(rgb)] = rgb_filters
    return new.reshape(out, inputs // 3 * bands, *kernel)


def _first_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute, convolution) of `module`'s first convolution (the stem: every
    catalogue trunk registers it first), which must take RGB (3 x G inputs)."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            if child.in_channels % 3 or child.groups != 1:
                break
            parent_name, _, attribute = name.rpartition(".")
            return module.get_submodule(parent_name), attribute, child
    raise NadirError(f"{type(module).__name__}'s first convolution does not take RGB: its "
                     "input bands cannot be adapted")


def adapt_first_conv(module: nn.Module, bands: InputBands,
                     source_rgb: tuple[int, int, int] = (0, 1, 2)) -> nn.Conv2d:
    """Replace `module`'s first RGB convolution by one taking `bands.count` bands per group."""
    parent, attribute, conv = _first_conv(module)
    groups = conv.in_channels // 3
    adapted = nn.Conv2d(groups * bands.count, conv.out_channels, conv.kernel_size, conv.stride,
                        conv.padding, conv.dilation, bias=conv.bias is not None,
                        padding_mode=conv.padding_mode)
    with torch.no_grad():
        adapted.weight.copy_(adapted_weight(conv.weight, bands.count, bands.rgb, source_rgb))
        if conv.bias is not None:
            adapted.bias.copy_(conv.bias)
    setattr(parent, attribute, adapted.to(conv.weight.device))
    return adapted


def extended_normalisation(mean: list[float], std: list[float], bands: InputBands
                           ) -> tuple[list[float], list[float]]:
    """A model's RGB mean and std for `bands`: theirs at the RGB places, mean 0 and their mean
    std for every other band."""
    new_mean, new_std = [0.0] * bands.count, [sum(std) / 3] * bands.count
    for place, channel in zip(bands.rgb or (), range(3), strict=False):
        new_mean[place], new_std[place] = mean[channel], std[channel]
    return new_mean, new_std


class BandMixing(nn.Module):
    """A learnable 1x1 convolution from N bands to RGB: the identity on the RGB bands at first,
    zero on the others."""

    def __init__(self, bands: InputBands):
        super().__init__()
        self.mix = nn.Conv2d(bands.count, 3, 1, bias=True)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.bias.zero_()
            for channel, place in enumerate(bands.rgb or ()):
                self.mix.weight[channel, place] = 1.0

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.mix(torch.stack(images)))


def adapt_to_bands(model: nn.Module, bands: InputBands) -> nn.Module:
    """`model` (built for RGB, pretrained weights loaded) made to take `bands`: a band-mixing
    stem, or its first convolution and normalisation adapted (a wrapped model's own
    `adapt_to_bands`; a torchvision detector's backbone and transform)."""
    if bands.plain:
        return model
    if bands.mixing:
        return add_band_mixing(model, bands)
    if hasattr(model, "adapt_to_bands"):
        model.adapt_to_bands(bands)
        return model
    adapt_first_conv(model.backbone, bands)
    model.transform.image_mean, model.transform.image_std = extended_normalisation(
        model.transform.image_mean, model.transform.image_std, bands)
    return model


def add_band_mixing(model: nn.Module, bands: InputBands) -> nn.Module:
    """`model` with a `band_mixing` stem that every call's images pass through first."""
    model.band_mixing = BandMixing(bands)

    def mix_images(module: nn.Module, args: tuple, kwargs: dict):
        return (module.band_mixing(list(args[0])), *args[1:]), kwargs

    model.register_forward_pre_hook(mix_images, with_kwargs=True)
    return model
