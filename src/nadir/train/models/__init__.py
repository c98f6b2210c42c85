"""Build any catalogue model that the shared training loop trains, whatever library defines it.

torchvision models come from `torchvision_models`; DETR-family models from `detr_models`
(transformers) and YOLOX-family models from `yolox_models` (the yolox package), both wrapped
to torchvision's detection interface. Pretrained weights for the wrapped models are loaded
into every tensor whose name and shape match, like torchvision's COCO weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nadir.config.catalogue import entry, weight_source
from nadir.core.errors import NadirError
from nadir.train.models import torchvision_models
from nadir.train.models.bands import RGB, InputBands, adapt_to_bands
from nadir.train.weights import read_weights


def _wrapped_builder(backend: str) -> Callable[[str, int, int], nn.Module]:
    if backend == "transformers":
        from nadir.train.models.detr_models import build_model
    elif backend == "yolox":
        from nadir.train.models.yolox_models import build_model
    else:
        raise NadirError(f"the {backend} backend has no models for the shared training loop")
    return build_model


def build_detector(name: str, num_classes: int, size: int, pretrained: str = "none",
                   weights_file: Path | None = None, bands: InputBands = RGB) -> nn.Module:
    """The catalogue model `name` for `num_classes` classes (no background) on `size` px chips
    of `bands` (pretrained weights are loaded first, then adapted: `nadir.train.models.bands`)."""
    backend = entry(name).backend
    if backend == "torchvision":
        return adapt_to_bands(torchvision_models.build_model(
            name, num_classes, size, pretrained, weights_file), bands)
    torch.set_flush_denormal(True)  # denormals made CPU backward steps up to 300x slower
    source = weight_source(name, pretrained)
    state = None
    if source is not None:
        if weights_file is None:
            raise NadirError(f"model {name!r} with pretrained: {pretrained} needs its weights "
                             f"file ({source.file_name}); the fetch_weights rule provides it")
        state = read_weights(weights_file)  # tensors only: nothing in the file runs
        # YOLOX's release files hold the weights under "model" beside the optimiser's state.
        state = state.get("model", state) if isinstance(state, dict) else state
    model = _wrapped_builder(backend)(entry(name).architecture, num_classes, size)
    if state is not None:
        torchvision_models.load_matching(model.detector, state, str(weights_file))
    return adapt_to_bands(model, bands)
