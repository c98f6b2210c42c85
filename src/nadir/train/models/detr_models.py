"""DETR and Deformable DETR from Hugging Face `transformers`, as torchvision-style detectors.

The adapter gives a transformers detector torchvision's detection contract (train: images and
targets in, a dict of loss terms out; eval: images in, per-image boxes/scores/labels out), so the
one training loop of `torchvision_backend` trains it with the same checkpoints, resume, seed,
device, AMP and logging as every other model. Models are built from configs with random init and
a transformers ResNet backbone: nothing is downloaded (no hub, no timm).
"""

from __future__ import annotations

import torch
from torch import nn

from nadir.core.errors import NadirError

INSTALL_HINT = ("the DETR family needs the `transformers` extra: pip install -r "
                "envs/detectors.txt (transformers and scipy, whose matcher it uses)")

# The ImageNet statistics DETR's image processors normalise with.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# architecture key -> (ResNet depths, deformable attention?)
ARCHITECTURES: dict[str, tuple[list[int], bool]] = {
    "detr_resnet50": ([3, 4, 6, 3], False),
    "detr_resnet101": ([3, 4, 23, 3], False),
    "deformable_detr_resnet50": ([3, 4, 6, 3], True),
}


def require_transformers() -> None:
    try:
        import scipy  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise NadirError(INSTALL_HINT) from None


def build_config(architecture: str, num_classes: int):
    """The transformers config of a catalogue architecture: random init, no download."""
    from transformers import DeformableDetrConfig, DetrConfig, ResNetConfig

    depths, deformable = ARCHITECTURES[architecture]
    if deformable:
        backbone = ResNetConfig(depths=depths, out_features=["stage2", "stage3", "stage4"])
        return DeformableDetrConfig(backbone_config=backbone, num_labels=num_classes,
                                    auxiliary_loss=True)
    backbone = ResNetConfig(depths=depths, out_features=["stage4"])
    return DetrConfig(backbone_config=backbone, num_labels=num_classes, auxiliary_loss=True)


def train_whole_backbone(detector: nn.Module) -> int:
    """Make every backbone layer trainable, with BatchNorm that learns; return how many changed.

    transformers sets DETR's ResNet up for ImageNet weights: frozen BatchNorm, and the stem and
    first stage not trained. From random init that would leave those layers random forever, so
    (as the detectron2 adapter does from scratch) every layer trains and BatchNorm is restored.
    """
    replaced = 0
    for module in list(detector.modules()):
        for name, child in list(module.named_children()):
            if type(child).__name__.endswith("FrozenBatchNorm2d"):
                setattr(module, name, nn.BatchNorm2d(child.weight.shape[0]))
                replaced += 1
    for parameter in detector.parameters():
        parameter.requires_grad_(True)
    return replaced


class TransformersDetector(nn.Module):
    """A transformers DETR-family model behind torchvision's detection interface.

    Labels are 1..K as in the rest of nadir (transformers counts 0..K-1). Images are the
    chips of one dataset, all of one size, so a batch is stacked without padding.
    """

    def __init__(self, architecture: str, num_classes: int):
        super().__init__()
        require_transformers()
        from transformers import DeformableDetrForObjectDetection, DetrForObjectDetection

        self.deformable = ARCHITECTURES[architecture][1]
        self.config = build_config(architecture, num_classes)
        model_class = DeformableDetrForObjectDetection if self.deformable \
            else DetrForObjectDetection
        self.detector = model_class(self.config)
        train_whole_backbone(self.detector)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.score_thresh = 0.05
        self.detections_per_img = 100

    def adapt_to_bands(self, bands) -> None:
        """N input bands (`nadir.train.models.bands`): the ResNet stem and the normalisation."""
        from nadir.train.models.bands import adapt_first_conv, extended_normalisation

        backbone = self.detector.model.backbone
        adapt_first_conv(backbone, bands)
        for module in backbone.modules():  # the ResNet embedder checks its input's bands
            if getattr(module, "num_channels", None) == 3:
                module.num_channels = bands.count
        mean, std = extended_normalisation(MEAN, STD, bands)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1).to(self.mean)
        self.std = torch.tensor(std).view(1, -1, 1, 1).to(self.std)

    def loss_weights(self) -> dict[str, float]:
        return {"loss_ce": 1.0, "loss_bbox": float(self.config.bbox_loss_coefficient),
                "loss_giou": float(self.config.giou_loss_coefficient)}

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        pixels = (torch.stack(images) - self.mean) / self.std
        height, width = pixels.shape[-2:]
        if self.training:
            if targets is None:
                raise NadirError("training a detector needs targets")
            scale = pixels.new_tensor([width, height, width, height])
            labels = [{"class_labels": t["labels"] - 1,
                       "boxes": _xyxy_to_cxcywh(t["boxes"]) / scale} for t in targets]
            output = self.detector(pixel_values=pixels, labels=labels)
            return self._weighted_terms(output.loss_dict)
        output = self.detector(pixel_values=pixels)
        return self._detections(output.logits, output.pred_boxes, width, height)

    def _weighted_terms(self, loss_dict: dict) -> dict[str, torch.Tensor]:
        """Each loss term summed over the decoder layers with transformers' weights.

        The terms add up to the loss transformers optimises (`cardinality_error` is a
        metric, not a loss, and is left out).
        """
        weights = self.loss_weights()
        terms: dict[str, torch.Tensor] = {}
        for key, value in loss_dict.items():
            base = key.rsplit("_", 1)[0] if key.rsplit("_", 1)[-1].isdigit() else key
            if base in weights:
                terms[base] = terms.get(base, 0) + weights[base] * value
        return terms

    def _detections(self, logits: torch.Tensor, boxes: torch.Tensor, width: int,
                    height: int) -> list[dict]:
        scale = boxes.new_tensor([width, height, width, height])
        results = []
        for image_logits, image_boxes in zip(logits, boxes, strict=True):
            xyxy = _cxcywh_to_xyxy(image_boxes) * scale
            if self.deformable:
                # Sigmoid per class: the best (query, class) pairs, as Deformable DETR ranks them.
                probabilities = image_logits.sigmoid().flatten()
                k = min(self.detections_per_img, probabilities.numel())
                scores, index = probabilities.topk(k)
                classes = image_logits.shape[-1]
                labels, xyxy = index % classes, xyxy[index // classes]
            else:
                # Softmax with a last "no object" class, which is never reported.
                scores, labels = image_logits.softmax(-1)[:, :-1].max(-1)
                order = scores.argsort(descending=True)[: self.detections_per_img]
                scores, labels, xyxy = scores[order], labels[order], xyxy[order]
            keep = scores > self.score_thresh
            results.append({"boxes": xyxy[keep].clamp(min=0), "scores": scores[keep],
                            "labels": labels[keep] + 1})
        return results


def _xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def build_model(architecture: str, num_classes: int, size: int) -> nn.Module:
    """A DETR-family detector for `num_classes` classes; any chip size (no resizing)."""
    return TransformersDetector(architecture, num_classes)
