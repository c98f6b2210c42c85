"""The detectron2 adapter: its contract everywhere, real training where detectron2 imports.

detectron2 is on no package index these machines reach; the tests marked `needs_detectron2` run
when it is importable (the GPU image installs it) and are skipped with the reason otherwise.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import tiny_chips

from nadir.config.catalogue import CATALOGUE
from nadir.core.errors import NadirError
from nadir.train import detectron2 as d2

needs_detectron2 = pytest.mark.skipif(
    importlib.util.find_spec("detectron2") is None,
    reason="detectron2 is not importable here (it is not on PyPI; the GPU image installs it)")

D2_MODELS = sorted(n for n, e in CATALOGUE.items() if e.backend == "detectron2")


def test_catalogue_names_map_to_model_zoo_configs():
    assert {m: d2.zoo_config(m) for m in D2_MODELS} == {
        "d2_faster_rcnn_r50_fpn": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
        "d2_faster_rcnn_r101_fpn": "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
        "d2_retinanet_r50_fpn": "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
        "d2_fcos_r50_fpn": "COCO-Detection/fcos_R_50_FPN_1x.py",
        "d2_vitdet_b": "common/models/mask_rcnn_vitdet.py",
    }
    with pytest.raises(NadirError, match="torchvision backend"):
        d2.zoo_config("ssdlite320_mobilenet_v3_large")


def test_yaml_config_values_for_faster_rcnn_from_scratch():
    values = d2.model_overrides("d2_faster_rcnn_r50_fpn", num_classes=3, size=256,
                                pretrained="none", device="cpu", score_threshold=0.01,
                                max_detections=50)
    assert values == {
        "MODEL.ROI_HEADS.NUM_CLASSES": 3, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.01,
        "TEST.DETECTIONS_PER_IMAGE": 50, "MODEL.DEVICE": "cpu", "MODEL.WEIGHTS": "",
        "MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.RESNETS.NORM": "BN",
        "INPUT.MIN_SIZE_TRAIN": (256,), "INPUT.MAX_SIZE_TRAIN": 256,
        "INPUT.MIN_SIZE_TEST": 256, "INPUT.MAX_SIZE_TEST": 256,
    }


def test_pretrained_retinanet_keeps_frozen_stem_and_its_own_head_keys():
    values = d2.model_overrides("d2_retinanet_r50_fpn", 5, 512, "coco", "cuda")
    assert values["MODEL.RETINANET.NUM_CLASSES"] == 5
    assert "MODEL.ROI_HEADS.NUM_CLASSES" not in values
    assert values["MODEL.BACKBONE.FREEZE_AT"] == 2
    assert values["MODEL.RESNETS.NORM"] == "FrozenBN"


def test_lazy_config_values_for_fcos_and_vitdet():
    fcos = d2.model_overrides("d2_fcos_r50_fpn", 2, 128, "none", "cpu")
    assert fcos["model.num_classes"] == 2
    assert fcos["model.backbone.bottom_up.stages.norm"] == "BN"
    assert fcos["model.backbone.bottom_up.freeze_at"] == 0
    vitdet = d2.model_overrides("d2_vitdet_b", 4, 256, "imagenet", "cpu")
    assert vitdet["model.roi_heads.num_classes"] == 4
    # Boxes only: the mask branch of the zoo's Mask R-CNN is removed.
    assert vitdet["model.roi_heads.mask_in_features"] is None
    assert vitdet["model.roi_heads.mask_head"] is None
    assert vitdet["model.backbone.square_pad"] == 256


def test_dataset_registration_arguments(tmp_path):
    args = d2.registration_arguments("dota", "train", tmp_path / "coco.json", tmp_path / "chips")
    assert args == {"name": "nadir_dota_train", "metadata": {},
                    "json_file": str(tmp_path / "coco.json"),
                    "image_root": str(tmp_path / "chips")}


def test_class_indices_map_back_to_coco_ids():
    categories = [{"id": 11, "name": "b"}, {"id": 3, "name": "a"}, {"id": 94, "name": "c"}]
    assert d2.contiguous_category_ids(categories) == [3, 11, 94]


def test_unpacked_chips_are_named_by_shard(tmp_path):
    data = tiny_chips.build(tmp_path / "data", chips=3)
    rewritten = d2.unpack_chips(data["coco"], [data["shard"]], tmp_path / "chips")
    coco = json.loads(rewritten.read_text())
    assert [im["file_name"] for im in coco["images"]] == [f"0/chip-00{i}.png" for i in range(3)]
    assert all((tmp_path / "chips" / im["file_name"]).stat().st_size > 0 for im in coco["images"])


def test_missing_detectron2_is_a_clear_error(monkeypatch):
    if importlib.util.find_spec("detectron2") is not None:
        pytest.skip("detectron2 is installed here")
    with pytest.raises(NadirError, match="not on PyPI"):
        d2.require_detectron2()


@needs_detectron2
@pytest.mark.slow
@pytest.mark.parametrize("model", D2_MODELS)
def test_detectron2_model_trains_and_predicts(model, tmp_path):
    from nadir.evaluate.chips import evaluate
    from nadir.train.checkpoints import LocalCheckpoints

    data = tiny_chips.build(tmp_path / "data", chips=4)
    lr = 0.001 if model == "d2_retinanet_r50_fpn" else 0.0002  # RetinaNet: flat at 2e-4
    hp = tiny_chips.hyperparameters(iterations=8, log_interval=4, lr=lr, amp=False)
    job = tiny_chips.train_job(data, model, hp, tmp_path / "out",
                               checkpoints=LocalCheckpoints(tmp_path / "ck"), checkpoint_every=4)
    backend = d2.Detectron2Backend()
    result = backend.train(job)
    assert result["iterations"] == 8
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert [e["iteration"] for e in log] == [4, 8]
    assert log[-1]["loss"] < log[0]["loss"], [e["loss"] for e in log]
    assert LocalCheckpoints(tmp_path / "ck").iterations() == [4]
    # A rerun finds the checkpoint (the backend leaves it; `nadir train` removes it at the end)
    # and its `seconds` adds the time trained before the checkpoint to its own.
    import io

    import torch

    saved = torch.load(io.BytesIO(LocalCheckpoints(tmp_path / "ck").read(4)),
                       weights_only=False)
    job.outputs = tiny_chips.train_outputs(tmp_path / "rerun")
    rerun = backend.train(job)
    assert rerun["resumed_from"] == 4 and rerun["seconds"] > saved["nadir_seconds"] > 0
    rerun_log = json.loads((tmp_path / "rerun" / "train_log.json").read_text())
    assert [e["iteration"] for e in rerun_log] == [4, 8]
    predictions = backend.predict(tmp_path / "out" / "model.pt", data["coco"], [data["shard"]],
                                  {"score_threshold": 0.0, "max_detections": 20,
                                   "batch_size": 2})
    tiny_chips.assert_scored(evaluate(data["coco"], predictions, 20), data, predictions)


@needs_detectron2
def test_detectron2_trains_on_every_chip_empty_ones_included(tmp_path, monkeypatch):
    """detectron2 drops chips without objects by default; the other backends and run.json
    count them, so it must not, or leaderboard rows would not be comparable."""
    data = tiny_chips.build(tmp_path / "data", chips=4)
    coco = json.loads(data["coco"].read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 2]
    data["coco"].write_text(json.dumps(coco))
    seen = []

    class Recorded(d2.RegisteredChips):
        def __init__(self, dicts, *args):
            seen.append(len(dicts))
            super().__init__(dicts, *args)

    monkeypatch.setattr(d2, "RegisteredChips", Recorded)
    hp = tiny_chips.hyperparameters(iterations=1, log_interval=1, lr=0.0002, amp=False)
    result = d2.Detectron2Backend().train(
        tiny_chips.train_job(data, "d2_faster_rcnn_r50_fpn", hp, tmp_path / "out"))
    assert seen == [4] == [result["chips"]]


@needs_detectron2
@pytest.mark.slow
@pytest.mark.parametrize("model", ["d2_faster_rcnn_r50_fpn", "d2_fcos_r50_fpn"])
def test_detectron2_resume_ends_with_the_weights_of_an_uninterrupted_run(model, tmp_path):
    """Faster R-CNN samples from torch's random stream; FCOS keeps a running loss normaliser
    outside its state dict: a resumed run must restore both, and continue the batch order."""
    from interrupted import assert_same_run, train_interrupted_and_uninterrupted

    hp = tiny_chips.hyperparameters(iterations=4, log_interval=2, lr=0.0002, amp=False)
    reference, resumed, resumed_from = train_interrupted_and_uninterrupted(
        d2.Detectron2Backend(), model, hp, tmp_path, checkpoint_every=2, size=192)
    assert resumed_from == 2
    assert_same_run(reference, resumed)


def test_dense_detector_normaliser_starts_at_the_first_batch():
    class DenseDetector:
        def _ema_update(self, name, value, initial_value, momentum=0.9):
            old = getattr(self, name, initial_value)
            setattr(self, name, momentum * old + (1 - momentum) * value)
            return getattr(self, name)

    model = DenseDetector()
    d2.start_normaliser_at_first_batch(model)
    assert model._ema_update("loss_normalizer", 12, 300) == pytest.approx(12)
    assert model._ema_update("loss_normalizer", 2, 300) == pytest.approx(11)
    d2.start_normaliser_at_first_batch(object())  # a model without one is left alone
