"""Backends whose models run in the torchvision backend's training loop.

transformers (DETR, Deformable DETR) and yolox (YOLOX, YOLOv3) models are wrapped to
torchvision's detection interface (`detr_models`, `yolox_models`), so they share its loop
unchanged: seeded batches, checkpoints and resume, AMP, DDP, logging and prediction. A backend
here only names itself and records its library's version in the resolved config.
"""

from __future__ import annotations

from nadir.train.backend import TrainJob
from nadir.train.provenance import installed_versions
from nadir.train.torchvision_backend import TorchvisionBackend


class TransformersBackend(TorchvisionBackend):
    name = "transformers"

    def resolved_config(self, job: TrainJob) -> dict:
        from nadir.config.catalogue import entry

        config = super().resolved_config(job)
        config["versions"] |= installed_versions(["transformers", "scipy"])
        config["transformers"] = {"architecture": entry(job.model).architecture,
                                  "init": "random, transformers ResNet backbone (no download)"}
        return config


class YoloxBackend(TorchvisionBackend):
    name = "yolox"

    def resolved_config(self, job: TrainJob) -> dict:
        from nadir.config.catalogue import entry

        config = super().resolved_config(job)
        config["versions"] |= installed_versions(["yolox"])
        config["yolox"] = {"architecture": entry(job.model).architecture}
        return config
