"""Oriented FCOS: an anchor-free detector of rotated boxes, built on torchvision parts.

FCOS (Tian et al., 2019) with a fifth output per location: every feature-map location inside an
object (and within 1.5 strides of its centre, on the pyramid level its size belongs to) regresses
the distances (l, t, r, b) to the object's four sides measured in the object's own frame, the
box's angle as (cos 2θ, sin 2θ) (continuous, and the same for θ and θ + 180°), and FCOS's
centre-ness. Losses: focal loss for the classes; GIoU of (l, t, r, b) in the object's frame
(the angle left out: both boxes share the object's angle); smooth L1 on the angle vector; BCE
for centre-ness. Prediction decodes each location to 4 corners and keeps the best per class by
rotated NMS (polygon IoU, `nadir.core.geometry`).

Written for nadir (no upstream rotated-detection code); it trains from random init on the CPU
in the shared loop. Targets need `quads` (the corners of each object's `rbox`, which
`ShardChips` provides); predictions carry `polygons` beside the enclosing axis-aligned `boxes`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from nadir.core.geometry import SQUARE_TOLERANCE, rotated_nms

STRIDES = (8, 16, 32, 64, 128)  # P3..P7 of a ResNet FPN with LastLevelP6P7
CENTRE_RADIUS = 1.5  # strides: how close to an object's centre a positive location lies
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def quads_to_rboxes(quads: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h, θ radians) of rectangles given by 4 corners in order, rows of 8 numbers.

    w is the long side and θ its direction (mod π); a square's θ is taken mod π/2, as
    `nadir.core.geometry` does, so one square always gets one target angle.
    """
    points = quads.reshape(-1, 4, 2)
    first, second = points[:, 1] - points[:, 0], points[:, 2] - points[:, 1]
    len_first, len_second = first.norm(dim=1), second.norm(dim=1)
    long_first = len_first >= len_second
    w = torch.where(long_first, len_first, len_second)
    h = torch.where(long_first, len_second, len_first)
    edge = torch.where(long_first[:, None], first, second)
    theta = torch.atan2(edge[:, 1], edge[:, 0])
    square = (w - h) <= SQUARE_TOLERANCE * w.clamp(min=1.0)
    period = torch.where(square, torch.full_like(theta, math.pi / 2),
                         torch.full_like(theta, math.pi))
    theta = torch.remainder(theta + period / 2, period) - period / 2
    centre = points.mean(dim=1)
    return torch.stack([centre[:, 0], centre[:, 1], w, h, theta], 1)


def rboxes_to_quads(rboxes: torch.Tensor) -> torch.Tensor:
    """The 4 corners (rows of 8) of (cx, cy, w, h, θ radians), in `rbox_to_polygon`'s order."""
    cx, cy, w, h, theta = rboxes.unbind(1)
    c, s = torch.cos(theta), torch.sin(theta)
    u = torch.stack([-w, w, w, -w], 1) / 2
    v = torch.stack([-h, -h, h, h], 1) / 2
    xs = cx[:, None] + c[:, None] * u - s[:, None] * v
    ys = cy[:, None] + s[:, None] * u + c[:, None] * v
    return torch.stack([xs, ys], 2).reshape(-1, 8)


def decode(points: torch.Tensor, ltrb: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotated boxes (cx, cy, w, h, θ) from locations, side distances and (cos 2θ, sin 2θ)."""
    theta = torch.atan2(angle[:, 1], angle[:, 0]) / 2
    c, s = torch.cos(theta), torch.sin(theta)
    du, dv = (ltrb[:, 2] - ltrb[:, 0]) / 2, (ltrb[:, 3] - ltrb[:, 1]) / 2
    cx = points[:, 0] + c * du - s * dv
    cy = points[:, 1] + s * du + c * dv
    return torch.stack([cx, cy, ltrb[:, 0] + ltrb[:, 2], ltrb[:, 1] + ltrb[:, 3], theta], 1)


def side_distances(points: torch.Tensor, rboxes: torch.Tensor) -> torch.Tensor:
    """(l, t, r, b) of every location to every box's sides in the box's frame: [P, G, 4]."""
    offset = points[:, None, :] - rboxes[None, :, :2]
    c, s = torch.cos(rboxes[:, 4]), torch.sin(rboxes[:, 4])
    u = offset[..., 0] * c + offset[..., 1] * s
    v = -offset[..., 0] * s + offset[..., 1] * c
    half_w, half_h = rboxes[:, 2] / 2, rboxes[:, 3] / 2
    return torch.stack([half_w + u, half_h + v, half_w - u, half_h - v], 2)


def _tower(channels: int, depth: int) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class OrientedFCOSHead(nn.Module):
    """Shared over pyramid levels: class logits; side distances, angle and centre-ness.

    Two convolutions per tower where FCOS has four: the head then costs about what the
    ResNet-18 trunk does on the finest level, which matters on the CPU.
    """

    def __init__(self, channels: int, num_classes: int, depth: int = 2):
        super().__init__()
        self.class_tower, self.box_tower = _tower(channels, depth), _tower(channels, depth)
        self.class_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.sides = nn.Conv2d(channels, 4, 3, padding=1)
        self.angle = nn.Conv2d(channels, 2, 3, padding=1)
        self.centreness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(STRIDES)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.class_logits.bias, -math.log(99))  # prior probability 0.01

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per location, all levels concatenated (P3 first, row-major): [N, P, ...]."""
        outputs: dict[str, list] = {"logits": [], "ltrb": [], "angle": [], "centreness": []}
        for level, feature in enumerate(features):
            classes, boxes = self.class_tower(feature), self.box_tower(feature)
            stride = STRIDES[level]
            # Distances in pixels: exp keeps them positive, the per-level scale and stride
            # start every level at its own size.
            sides = torch.exp((self.scales[level] * self.sides(boxes)).float().clamp(max=10))
            for key, value in (("logits", self.class_logits(classes)), ("ltrb", sides * stride),
                               ("angle", self.angle(boxes)),
                               ("centreness", self.centreness(boxes))):
                outputs[key].append(value.flatten(2).transpose(1, 2))
        return {key: torch.cat(values, 1).float() for key, values in outputs.items()}


def locations(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres of every feature-map location ([P, 2]) and the stride of each ([P])."""
    points, strides = [], []
    for feature, stride in zip(features, STRIDES, strict=True):
        height, width = feature.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(height, device=feature.device),
                                torch.arange(width, device=feature.device), indexing="ij")
        points.append((torch.stack([xs, ys], 2).reshape(-1, 2).float() + 0.5) * stride)
        strides.append(torch.full((height * width,), float(stride), device=feature.device))
    return torch.cat(points), torch.cat(strides)


def size_ranges(strides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS's object size per level: the largest side distance lies in (4, 8] strides of its
    level (0 from the finest level, unbounded at the coarsest)."""
    lower = torch.where(strides == STRIDES[0], torch.zeros_like(strides), strides * 4)
    upper = torch.where(strides == STRIDES[-1], torch.full_like(strides, math.inf), strides * 8)
    return lower, upper


class OrientedFCOS(nn.Module):
    """FCOS with an angle: `forward(images, targets)` gives losses in training mode and, in
    eval mode, per image `boxes` (enclosing xyxy), `polygons` (4 corners), `scores`, `labels`
    (1..K)."""

    target_keys = ("quads",)  # the training loop passes these besides boxes and labels

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = OrientedFCOSHead(backbone.out_channels, num_classes)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        # The same names as torchvision's detectors: the backend's predict sets them.
        self.score_thresh = 0.05
        self.detections_per_img = 100
        self.nms_thresh = 0.5
        self.topk_candidates = 1000

    def adapt_to_bands(self, bands) -> None:
        """N input bands (`nadir.train.models.bands`): the ResNet stem and the normalisation."""
        from nadir.train.models.bands import adapt_first_conv, extended_normalisation

        adapt_first_conv(self.backbone, bands)
        mean, std = extended_normalisation(IMAGENET_MEAN, IMAGENET_STD, bands)
        self.mean = torch.tensor(mean).view(-1, 1, 1).to(self.mean)
        self.std = torch.tensor(std).view(-1, 1, 1).to(self.std)

    def _batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Normalised images in one zero-padded batch, sides rounded up to 32 pixels."""
        height = math.ceil(max(im.shape[1] for im in images) / 32) * 32
        width = math.ceil(max(im.shape[2] for im in images) / 32) * 32
        batch = images[0].new_zeros(len(images), images[0].shape[0], height, width)
        for i, image in enumerate(images):
            batch[i, :, :image.shape[1], :image.shape[2]] = (image - self.mean) / self.std
        return batch

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        features = list(self.backbone(self._batch(images)).values())
        outputs = self.head(features)
        points, strides = locations(features)
        if self.training:
            if targets is None:
                raise ValueError("OrientedFCOS needs targets in training mode")
            return self.losses(outputs, points, strides, targets)
        return [self.detect({k: v[i] for k, v in outputs.items()}, points, image.shape[1:])
                for i, image in enumerate(images)]

    def assign(self, points: torch.Tensor, strides: torch.Tensor,
               target: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per location: the object it regresses (-1 for background), its side distances, and
        that object's rbox."""
        rboxes = quads_to_rboxes(target["quads"].float())
        if len(rboxes) == 0:
            empty = points.new_zeros(len(points), 4)
            return torch.full((len(points),), -1, dtype=torch.long, device=points.device), \
                empty, points.new_zeros(len(points), 5)
        sides = side_distances(points, rboxes)
        offset = points[:, None, :] - rboxes[None, :, :2]
        c, s = torch.cos(rboxes[:, 4]), torch.sin(rboxes[:, 4])
        along = torch.maximum((offset[..., 0] * c + offset[..., 1] * s).abs(),
                              (-offset[..., 0] * s + offset[..., 1] * c).abs())
        lower, upper = size_ranges(strides)
        largest = sides.max(2).values
        match = (sides.min(2).values > 0) & (along < CENTRE_RADIUS * strides[:, None]) & \
            (largest > lower[:, None]) & (largest <= upper[:, None])
        area = torch.where(match, (rboxes[:, 2] * rboxes[:, 3])[None, :], math.inf)
        smallest, owner = area.min(1)  # a location inside several objects takes the smallest
        owner = torch.where(torch.isfinite(smallest), owner, -1)
        index = owner.clamp(min=0)
        return owner, sides[torch.arange(len(points)), index], rboxes[index]

    def losses(self, outputs: dict, points: torch.Tensor, strides: torch.Tensor,
               targets: list[dict]) -> dict[str, torch.Tensor]:
        class_targets, positives, side_targets, angle_targets = [], [], [], []
        for target in targets:
            owner, sides, rboxes = self.assign(points, strides, target)
            onehot = torch.zeros(len(points), self.num_classes, device=points.device)
            positive = owner >= 0
            onehot[positive, target["labels"][owner[positive]] - 1] = 1.0
            class_targets.append(onehot)
            positives.append(positive)
            side_targets.append(sides)
            angle_targets.append(torch.stack([torch.cos(2 * rboxes[:, 4]),
                                              torch.sin(2 * rboxes[:, 4])], 1))
        positive = torch.stack(positives)
        count = max(1.0, float(positive.sum()))
        classification = sigmoid_focal_loss(outputs["logits"], torch.stack(class_targets),
                                            reduction="sum") / count
        predicted, wanted = outputs["ltrb"][positive], torch.stack(side_targets)[positive]
        as_boxes = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=points.device)
        box = generalized_box_iou_loss(predicted * as_boxes,
                                       wanted * as_boxes, reduction="sum") / count
        angle = F.smooth_l1_loss(outputs["angle"][positive],
                                 torch.stack(angle_targets)[positive], beta=0.1,
                                 reduction="sum") / count
        left_right, top_bottom = wanted[:, [0, 2]], wanted[:, [1, 3]]
        centred = torch.sqrt((left_right.min(1).values / left_right.max(1).values)
                             * (top_bottom.min(1).values / top_bottom.max(1).values))
        centreness = F.binary_cross_entropy_with_logits(
            outputs["centreness"][positive][:, 0], centred, reduction="sum") / count
        return {"classification": classification, "box_giou": box, "angle": angle,
                "centreness": centreness}

    @torch.no_grad()
    def detect(self, outputs: dict, points: torch.Tensor, size: tuple[int, int]) -> dict:
        """One image's detections: candidates above `score_thresh`, rotated NMS per class."""
        scores = torch.sqrt(torch.sigmoid(outputs["logits"])
                            * torch.sigmoid(outputs["centreness"]))
        location, label = torch.nonzero(scores > self.score_thresh, as_tuple=True)
        candidate_scores = scores[location, label]
        if len(candidate_scores) > self.topk_candidates:
            top = candidate_scores.topk(self.topk_candidates).indices
            location, label, candidate_scores = location[top], label[top], candidate_scores[top]
        quads = rboxes_to_quads(decode(points[location], outputs["ltrb"][location],
                                       outputs["angle"][location]))
        keep = rotated_nms(quads.cpu().double().numpy().tolist(), candidate_scores.tolist(),
                           label.tolist(), self.nms_thresh)
        keep = torch.tensor(keep, dtype=torch.long, device=quads.device)
        keep = keep[candidate_scores[keep].argsort(descending=True)][:self.detections_per_img]
        quads = quads[keep]
        height, width = size
        xs, ys = quads[:, 0::2], quads[:, 1::2]
        boxes = torch.stack([xs.min(1).values.clamp(0, width), ys.min(1).values.clamp(0, height),
                             xs.max(1).values.clamp(0, width),
                             ys.max(1).values.clamp(0, height)], 1)
        return {"boxes": boxes, "polygons": quads, "scores": candidate_scores[keep],
                "labels": label[keep] + 1}
