"""The model catalogue: every model name a config may use, in one table.

Each entry says which backend trains it, which architecture it builds (a torchvision builder or a
detectron2 model zoo config), the hyperparameters it needs that differ from `training`, where its
pretrained weights come from (with checksum) and under which licence. This module imports no
torch: the Snakefile reads it at parse time to validate model names and to plan weight downloads.

Checksums: a full SHA-256 is pinned wherever upstream publishes one, and none of these upstreams
does. torchvision publishes the first 8 hex digits of each file's SHA-256 in its file name
(`resnet50-0676ba61.pth`): that prefix is pinned and checked, but 32 bits stop a corrupt
download, not a crafted file. detectron2's model zoo, the MAE release and YOLOX's GitHub
releases publish no SHA-256, so their entries carry `sha256=None`. Either way the fetch rule
records the full SHA-256 of what it downloaded beside the file, every training job checks the
file against that record, and no weights file is unpickled beyond tensors and plain data
(`nadir.train.weights`), so a hostile file cannot run code whatever its digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WeightSource:
    """One pretrained weights file: where to get it and how to check it."""

    url: str
    sha256: str | None  # full digest or a published prefix; None where upstream gives none
    licence: str
    torchvision_enum: str | None = None  # member of the torchvision Weights enum it matches

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    backend: str  # "torchvision", "detectron2", "transformers" or "yolox"
    architecture: str  # torchvision: builder key; detectron2: model zoo config path;
    # transformers / yolox: a key of detr_models.ARCHITECTURES / yolox_models.ARCHITECTURES
    description: str
    licence: str  # of the code; weights carry their own
    hyperparameters: dict = field(default_factory=dict)  # over `training`, under the user's
    weights: dict[str, WeightSource] = field(default_factory=dict)  # "imagenet"/"coco" → source
    oriented: bool = False  # predicts rotated boxes: each detection carries a 4-corner polygon


_TV_MODELS = "https://download.pytorch.org/models/"
_D2 = "https://dl.fbaipublicfiles.com/detectron2/"
_TV_LICENCE = "BSD-3-Clause (torchvision)"
_NADIR_LICENCE = "Apache-2.0 (nadir; torchvision parts BSD-3-Clause)"
_D2_LICENCE = "Apache-2.0 (detectron2)"
# Weights carry their publishers' terms. torchvision states no licence for its weights and
# points to the training data's terms (ImageNet, COCO); detectron2's MODEL_ZOO.md licenses its
# models CC BY-SA 3.0; MAE's ImageNet weights were released CC BY-NC 4.0 by the MAE authors.
_TV_WEIGHTS = "torchvision weights: no licence stated; ImageNet/COCO terms apply"
_D2_WEIGHTS = "CC BY-SA 3.0 (detectron2 model zoo)"
_MAE_WEIGHTS = "CC BY-NC 4.0 (MAE release; non-commercial)"
_HF_LICENCE = "Apache-2.0 (transformers)"
_YOLOX_LICENCE = "Apache-2.0 (YOLOX)"
# YOLOX publishes its COCO weights as release files of its Apache-2.0 repository, with no
# separate licence and no checksum.
_YOLOX = "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/"
_YOLOX_WEIGHTS = "YOLOX release: no separate licence stated (code Apache-2.0); COCO terms apply"
# DETR learns slowly and its transformer diverges at the shared 1e-3 from scratch.
_DETR_HP = {"lr": 0.0001}


def _tv(file_name: str, enum: str) -> WeightSource:
    return WeightSource(_TV_MODELS + file_name, file_name.rsplit("-", 1)[-1].split(".")[0],
                        _TV_WEIGHTS, enum)


def _d2(path: str, licence: str = _D2_WEIGHTS) -> WeightSource:
    return WeightSource(_D2 + path, None, licence)


def _yolox(file_name: str) -> WeightSource:
    return WeightSource(_YOLOX + file_name, None, _YOLOX_WEIGHTS)


_RESNET18 = _tv("resnet18-f37072fd.pth", "IMAGENET1K_V1")
_RESNET50 = _tv("resnet50-0676ba61.pth", "IMAGENET1K_V1")
_MOBILENET_V3 = _tv("mobilenet_v3_large-8738ca79.pth", "IMAGENET1K_V1")
_D2_R50 = _d2("ImageNetPretrained/MSRA/R-50.pkl")

CATALOGUE: dict[str, ModelEntry] = {e.name: e for e in [
    ModelEntry("ssdlite320_mobilenet_v3_large", "torchvision", "ssdlite320_mobilenet_v3_large",
               "SSDlite, MobileNetV3-Large", _TV_LICENCE,
               weights={"imagenet": _MOBILENET_V3,
                        "coco": _tv("ssdlite320_mobilenet_v3_large_coco-a79551df.pth", "COCO_V1")}),
    ModelEntry("ssd300_vgg16", "torchvision", "ssd300_vgg16", "SSD300, VGG-16 (300 px input)",
               _TV_LICENCE, hyperparameters={"lr": 0.0002},  # diverges at 5e-3 from scratch
               weights={"imagenet": _tv("vgg16_features-amdegroot-88682ab5.pth",
                                        "IMAGENET1K_FEATURES"),
                        "coco": _tv("ssd300_vgg16_coco-b556d3b4.pth", "COCO_V1")}),
    ModelEntry("fcos_resnet18_fpn", "torchvision", "fcos_resnet18_fpn", "FCOS, ResNet-18 FPN",
               _TV_LICENCE, weights={"imagenet": _RESNET18}),
    ModelEntry("oriented_fcos_resnet18_fpn", "torchvision", "oriented_fcos_resnet18_fpn",
               "Oriented FCOS (rotated boxes), ResNet-18 FPN", _NADIR_LICENCE,
               weights={"imagenet": _RESNET18},
               oriented=True),
    ModelEntry("fcos_resnet50_fpn", "torchvision", "fcos_resnet50_fpn", "FCOS, ResNet-50 FPN",
               _TV_LICENCE,
               weights={"imagenet": _RESNET50,
                        "coco": _tv("fcos_resnet50_fpn_coco-99b0c9b7.pth", "COCO_V1")}),
    ModelEntry("retinanet_resnet50_fpn_v2", "torchvision", "retinanet_resnet50_fpn_v2",
               "RetinaNet v2, ResNet-50 FPN", _TV_LICENCE,
               weights={"imagenet": _RESNET50,
                        "coco": _tv("retinanet_resnet50_fpn_v2_coco-5905b1c5.pth", "COCO_V1")}),
    ModelEntry("fasterrcnn_resnet50_fpn_v2", "torchvision", "fasterrcnn_resnet50_fpn_v2",
               "Faster R-CNN v2, ResNet-50 FPN", _TV_LICENCE,
               weights={"imagenet": _RESNET50,
                        "coco": _tv("fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth", "COCO_V1")}),
    ModelEntry("fasterrcnn_mobilenet_v3_large_fpn", "torchvision",
               "fasterrcnn_mobilenet_v3_large_fpn", "Faster R-CNN, MobileNetV3-Large FPN",
               _TV_LICENCE,
               weights={"imagenet": _MOBILENET_V3,
                        "coco": _tv("fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth", "COCO_V1")}),
    ModelEntry("fasterrcnn_convnext_tiny_fpn", "torchvision", "fasterrcnn_convnext_tiny_fpn",
               "Faster R-CNN, ConvNeXt-T FPN", _TV_LICENCE,
               weights={"imagenet": _tv("convnext_tiny-983f1562.pth", "IMAGENET1K_V1")}),
    ModelEntry("fasterrcnn_swin_t_fpn", "torchvision", "fasterrcnn_swin_t_fpn",
               "Faster R-CNN, Swin-T FPN", _TV_LICENCE,
               hyperparameters={"lr": 0.0001},  # its loss exploded at 1e-3 from scratch
               weights={"imagenet": _tv("swin_t-704ceda3.pth", "IMAGENET1K_V1")}),
    ModelEntry("d2_faster_rcnn_r50_fpn", "detectron2",
               "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
               "Faster R-CNN, ResNet-50 FPN (detectron2)", _D2_LICENCE,
               weights={"imagenet": _D2_R50, "coco": _d2(
                   "COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl")}),
    ModelEntry("d2_faster_rcnn_r101_fpn", "detectron2",
               "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
               "Faster R-CNN, ResNet-101 FPN (detectron2)", _D2_LICENCE,
               weights={"imagenet": _d2("ImageNetPretrained/MSRA/R-101.pkl"), "coco": _d2(
                   "COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl")}),
    ModelEntry("d2_retinanet_r50_fpn", "detectron2", "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
               "RetinaNet, ResNet-50 FPN (detectron2)", _D2_LICENCE,
               weights={"imagenet": _D2_R50, "coco": _d2(
                   "COCO-Detection/retinanet_R_50_FPN_3x/190397829/model_final_5bd44e.pkl")}),
    ModelEntry("d2_fcos_r50_fpn", "detectron2", "COCO-Detection/fcos_R_50_FPN_1x.py",
               "FCOS, ResNet-50 FPN (detectron2)", _D2_LICENCE,
               weights={"imagenet": _D2_R50}),
    ModelEntry("d2_vitdet_b", "detectron2", "common/models/mask_rcnn_vitdet.py",
               "ViTDet, ViT-B simple feature pyramid, box head only (detectron2)", _D2_LICENCE,
               hyperparameters={"lr": 0.0001},
               weights={"imagenet": _d2("ImageNetPretrained/MAE/mae_pretrain_vit_base.pth",
                                        _MAE_WEIGHTS),
                        "coco": _d2("ViTDet/COCO/mask_rcnn_vitdet_b/f325346929/"
                                    "model_final_61ccd1.pkl")}),
    ModelEntry("detr_r50", "transformers", "detr_resnet50", "DETR, ResNet-50 (transformers)",
               _HF_LICENCE, hyperparameters=_DETR_HP),
    ModelEntry("detr_r101", "transformers", "detr_resnet101", "DETR, ResNet-101 (transformers)",
               _HF_LICENCE, hyperparameters=_DETR_HP),
    ModelEntry("deformable_detr_r50", "transformers", "deformable_detr_resnet50",
               "Deformable DETR, ResNet-50, single stage, no box refinement (transformers)",
               _HF_LICENCE, hyperparameters=_DETR_HP),
    ModelEntry("yolox_s", "yolox", "yolox_s", "YOLOX-s (yolox)", _YOLOX_LICENCE,
               weights={"coco": _yolox("yolox_s.pth")}),
    ModelEntry("yolox_m", "yolox", "yolox_m", "YOLOX-m (yolox)", _YOLOX_LICENCE,
               weights={"coco": _yolox("yolox_m.pth")}),
    ModelEntry("yolox_l", "yolox", "yolox_l", "YOLOX-l (yolox)", _YOLOX_LICENCE,
               weights={"coco": _yolox("yolox_l.pth")}),
    ModelEntry("yolox_x", "yolox", "yolox_x", "YOLOX-x (yolox)", _YOLOX_LICENCE,
               weights={"coco": _yolox("yolox_x.pth")}),
    ModelEntry("yolov3", "yolox", "yolov3_darknet53",
               "YOLOv3: Darknet-53 + FPN with YOLOX's anchor-free decoupled head, not the "
               "original anchor head (yolox)", _YOLOX_LICENCE,
               weights={"coco": _yolox("yolox_darknet.pth")}),
]}


def entry(name: str) -> ModelEntry:
    if name not in CATALOGUE:
        raise KeyError(f"unknown model {name!r}; the catalogue has {sorted(CATALOGUE)}")
    return CATALOGUE[name]


def resolved_pretrained(name: str, pretrained: str, dataset_format: str | None) -> str:
    """The weights a run of model `name` starts from: `pretrained` as set, or for `auto` the
    best the model offers (`coco`, else `imagenet`, else `none`) on a real dataset and `none`
    on the embedded sample (format `sample`: short CPU runs, no download). `dataset_format`
    None: a real dataset."""
    if pretrained != "auto":
        return pretrained
    if dataset_format == "sample":
        return "none"
    offered = entry(name).weights
    return next((kind for kind in ("coco", "imagenet") if kind in offered), "none")


def weight_source(name: str, pretrained: str) -> WeightSource | None:
    """The weights a model starts from (None for `pretrained: none`), or a clear KeyError."""
    if pretrained == "none":
        return None
    model = entry(name)
    if pretrained not in model.weights:
        offered = ["none", *model.weights]
        raise KeyError(f"model {name!r} has no {pretrained!r} weights in the catalogue; "
                       f"choose pretrained from {offered}")
    return model.weights[pretrained]


def weight_files() -> dict[str, WeightSource]:
    """Every downloadable file by name; models sharing a backbone share one download."""
    return {source.file_name: source for model in CATALOGUE.values()
            for source in model.weights.values()}
