"""Backend name -> implementation, imported only when asked for.

A backend's module imports its framework (torch, detectron2, transformers...), so naming a
backend costs nothing until it is used; a new backend is one line here and one catalogue entry.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from nadir.config.catalogue import entry
from nadir.train.backend import Backend

BACKENDS = {
    "torchvision": "nadir.train.torchvision_backend:TorchvisionBackend",
    "detectron2": "nadir.train.detectron2_backend:Detectron2Backend",
    "transformers": "nadir.train.loop_backends:TransformersBackend",
    "yolox": "nadir.train.loop_backends:YoloxBackend",
}


def get_backend(name: str) -> Backend:
    """A new instance of the backend called `name`."""
    if name not in BACKENDS:
        raise KeyError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def backend_of_weights(weights: Path) -> Backend:
    """The backend that trained a `model.pt` (every backend saves its catalogue name in it)."""
    from nadir.train.weights import read_weights

    saved = read_weights(weights, mmap=True)
    return get_backend(entry(saved["model"]).backend)
