"""YOLOX and the YOLOX package's Darknet-53 YOLOv3, as torchvision-style detectors.

Like `detr_models`, the adapter gives the `yolox` package's models torchvision's detection
contract, so the shared training loop trains them. Sizes follow the YOLOX experiment files
(depth and width multipliers of CSPDarknet + PAFPN); `yolov3` is the package's Darknet-53 with
the YOLOv3 FPN neck and YOLOX's anchor-free decoupled head (the YOLOX paper's YOLOv3 baseline),
not the original anchor-based YOLOv3 head.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from nadir.core.errors import NadirError

INSTALL_HINT = ("YOLOX and YOLOv3 need the `yolox` package, which pins onnx versions no index "
                "serves: pip install -r envs/detectors.txt, then pip install "
                "--no-build-isolation --no-deps -r envs/yolox.txt (see docs/models.md)")

# architecture key -> (depth, width) of CSPDarknet/PAFPN; None: Darknet-53 with the YOLOv3 FPN
ARCHITECTURES: dict[str, tuple[float, float] | None] = {
    "yolox_s": (0.33, 0.50),
    "yolox_m": (0.67, 0.75),
    "yolox_l": (1.0, 1.0),
    "yolox_x": (1.33, 1.25),
    "yolov3_darknet53": None,
}
STRIDE = 32  # the coarsest feature map: inputs are padded to a multiple of it
PAD_VALUE = 114.0  # the grey YOLOX pads with
NMS_IOU = 0.65  # YOLOX's evaluation setting


def require_yolox() -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import yolox.models  # noqa: F401
    except ImportError as error:
        raise NadirError(f"{INSTALL_HINT} ({error})") from None


def _yolox_network(architecture: str, num_classes: int) -> nn.Module:
    from yolox.models import YOLOFPN, YOLOPAFPN, YOLOX, YOLOXHead

    sizes = ARCHITECTURES[architecture]
    if sizes is None:
        network = YOLOX(YOLOFPN(), YOLOXHead(num_classes, 1.0, in_channels=[128, 256, 512],
                                            act="lrelu"))
    else:
        depth, width = sizes
        network = YOLOX(YOLOPAFPN(depth, width), YOLOXHead(num_classes, width))
    # The experiment files' initialisation: BatchNorm as trained upstream, a low prior
    # probability for objectness and class scores so the first losses are sane.
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps, module.momentum = 1e-3, 0.03
    network.head.initialize_biases(1e-2)
    return network


class YoloxDetector(nn.Module):
    """A `yolox` model behind torchvision's detection interface (labels 1..K, xyxy pixels).

    The network sees BGR pixels in 0..255, as YOLOX's COCO weights were trained on.
    """

    def __init__(self, architecture: str, num_classes: int):
        super().__init__()
        require_yolox()
        self.num_classes = num_classes
        self.detector = _yolox_network(architecture, num_classes)
        self.score_thresh = 0.05
        self.detections_per_img = 100
        self.bgr = True  # the network's first convolution takes BGR (its COCO weights' order)

    def adapt_to_bands(self, bands) -> None:
        """N input bands (`nadir.train.models.bands`): the stem's convolution (each of the
        Focus stem's four pixel phases alike), its RGB filters taken from their BGR places;
        the network then takes the bands in chip order."""
        from nadir.train.models.bands import adapt_first_conv

        adapt_first_conv(self.detector.backbone, bands, source_rgb=(2, 1, 0))
        self.bgr = False

    def _pixels(self, images: list[torch.Tensor]) -> torch.Tensor:
        pixels = torch.stack(images)
        pixels = (pixels.flip(1) if self.bgr else pixels) * 255.0
        height, width = pixels.shape[-2:]
        pad_h, pad_w = -height % STRIDE, -width % STRIDE
        if pad_h or pad_w:  # right and bottom only: box coordinates stay as they are
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h), value=PAD_VALUE)
        return pixels

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        pixels = self._pixels(images)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # yolox calls torch.cuda.amp
            if self.training:
                if targets is None:
                    raise NadirError("training a detector needs targets")
                output = self.detector(pixels, _yolox_targets(targets, pixels))
                return {name: torch.as_tensor(output[name], device=pixels.device,
                                              dtype=torch.float32)
                        for name in ("iou_loss", "conf_loss", "cls_loss", "l1_loss")}
            return self._detections(self.detector(pixels))

    def _detections(self, raw: torch.Tensor) -> list[dict]:
        from yolox.utils import postprocess

        results = []
        kept = postprocess(raw.float(), self.num_classes, self.score_thresh, NMS_IOU)
        for rows in kept:
            if rows is None:
                rows = raw.new_zeros((0, 7))
            scores = rows[:, 4] * rows[:, 5]  # objectness x class probability
            order = scores.argsort(descending=True)[: self.detections_per_img]
            results.append({"boxes": rows[order, :4].clamp(min=0), "scores": scores[order],
                            "labels": rows[order, 6].long() + 1})
        return results


def _yolox_targets(targets: list[dict], pixels: torch.Tensor) -> torch.Tensor:
    """Batch targets as YOLOX reads them: (B, max objects, [class, cx, cy, w, h]), zero-padded.

    YOLOX counts an image's objects as its rows with a non-zero sum, hence the padding rows of
    zeros.
    """
    most = max(1, max(len(t["boxes"]) for t in targets))
    batch = pixels.new_zeros((len(targets), most, 5))
    for row, target in enumerate(targets):
        boxes = target["boxes"].to(pixels)
        count = len(boxes)
        if count:
            batch[row, :count, 0] = (target["labels"] - 1).to(pixels)
            batch[row, :count, 1] = (boxes[:, 0] + boxes[:, 2]) / 2
            batch[row, :count, 2] = (boxes[:, 1] + boxes[:, 3]) / 2
            batch[row, :count, 3] = boxes[:, 2] - boxes[:, 0]
            batch[row, :count, 4] = boxes[:, 3] - boxes[:, 1]
    return batch


def build_model(architecture: str, num_classes: int, size: int) -> nn.Module:
    """A YOLOX-family detector for `num_classes` classes; chips are padded to a multiple of 32."""
    return YoloxDetector(architecture, num_classes)
