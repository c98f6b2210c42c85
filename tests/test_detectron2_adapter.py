"""The detectron2 adapter: its contract everywhere, real training where detectron2 imports.

detectron2 is on no package index these machines reach; the tests marked `needs_detectron2` run
when it is importable (the GPU image installs it) and are skipped with the reason otherwise.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

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


def test_class_indices_map_back_to_coco_ids():
    categories = [{"id": 11, "name": "b"}, {"id": 3, "name": "a"}, {"id": 94, "name": "c"}]
    assert d2.contiguous_category_ids(categories) == [3, 11, 94]


def test_registered_records_say_where_each_chip_lies_in_its_shard(tmp_path):
    """The records detectron2 trains on carry their chip's shard, member name, offset and
    size, which read the chip's bytes straight out of the tar (nothing is unpacked)."""
    import tarfile

    data = tiny_chips.build(tmp_path / "data", chips=3)
    coco = json.loads(data["coco"].read_text())
    # as detectron2's load_coco_json makes them with no image root: by image id
    records = [{"file_name": im["file_name"], "image_id": im["id"], "annotations": []}
               for im in reversed(coco["images"])]
    located = d2.with_chip_ranges(records, data["coco"], [str(data["shard"])])
    with tarfile.open(data["shard"]) as tar:
        members = {m.name: (m.offset_data, m.size) for m in tar}
    assert [(r["image_id"], r["shard"], r["file_name"], r["offset"], r["size"])
            for r in located] == [(im["id"], 0, im["file_name"], *members[im["file_name"]])
                                  for im in reversed(coco["images"])]
    # a COCO file without recorded offsets: found by scanning the local shard
    for image in coco["images"]:
        del image["offset"], image["size"]
    (tmp_path / "old.json").write_text(json.dumps(coco))
    again = d2.with_chip_ranges([dict(r) for r in records], tmp_path / "old.json",
                                [str(data["shard"])])
    assert [(r["offset"], r["size"]) for r in again] == [(r["offset"], r["size"])
                                                         for r in located]


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
    # 12 steps: with the total gradient norm clipped at 10 (`common`), as the other backends
    # are, Faster R-CNN from scratch has not turned its loss down after 8
    hp = tiny_chips.hyperparameters(iterations=12, log_interval=6, lr=lr, amp=False)
    job = tiny_chips.train_job(data, model, hp, tmp_path / "out",
                               checkpoints=LocalCheckpoints(tmp_path / "ck"), checkpoint_every=6)
    backend = d2.Detectron2Backend()
    result = backend.train(job)
    assert result["iterations"] == 12
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert [e["iteration"] for e in log] == [6, 12]
    assert log[-1]["loss"] < log[0]["loss"], [e["loss"] for e in log]
    assert LocalCheckpoints(tmp_path / "ck").iterations() == [6]
    # A rerun finds the checkpoint (the backend leaves it; `nadir train` removes it at the end)
    # and its `seconds` adds the time trained before the checkpoint to its own.
    import io

    import torch

    saved = torch.load(io.BytesIO(LocalCheckpoints(tmp_path / "ck").read(6)),
                       weights_only=False)
    job.outputs = tiny_chips.train_outputs(tmp_path / "rerun")
    rerun = backend.train(job)
    assert rerun["resumed_from"] == 6 and rerun["seconds"] > saved["nadir_seconds"] > 0
    rerun_log = json.loads((tmp_path / "rerun" / "train_log.json").read_text())
    assert [e["iteration"] for e in rerun_log] == [6, 12]
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


def test_boxes_an_augmentation_cuts_are_clipped_or_dropped_with_their_classes():
    import torch

    boxes = torch.tensor([[-14.0, -14.0, 12.0, 12.0], [64.6, 2.9, 91.0, 29.4],
                          [41.0, 41.0, 73.0, 73.0], [10.0, 10.0, 10.0, 30.0]])
    kept, classes = d2.inside_image(boxes, torch.tensor([1, 2, 3, 4]), 64, 64)
    assert kept.tolist() == [[0.0, 0.0, 12.0, 12.0], [41.0, 41.0, 64.0, 64.0]]
    assert classes.tolist() == [1, 3]  # wholly outside, and without width: dropped


@needs_detectron2
def test_vitdet_jitter_leaves_every_box_inside_its_chip(tmp_path):
    """ViTDet's large-scale jitter (flip, resize 0.1-2.0, crop at the chip size) moves objects
    past the chip's edges; as detectron2's DatasetMapper, nadir clips and drops them."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "c.png")
    record = {"file_name": str(tmp_path / "c.png"), "annotations": [
        {"bbox": [2, 2, 18, 18], "bbox_mode": 1, "category_id": 0},
        {"bbox": [40, 40, 22, 22], "bbox_mode": 1, "category_id": 1}]}  # XYWH_ABS
    chips = d2.RegisteredChips([record], "RGB", True,
                               d2.reference_augmentations("d2_vitdet_b", 64, None), seed=0)
    counts = set()
    for code in range(8):
        item = chips[0, code]
        boxes, height, width = item["instances"].gt_boxes.tensor, item["height"], item["width"]
        assert len(boxes) == len(item["instances"].gt_classes)
        assert ((boxes >= 0).all() and (boxes[:, 0::2] <= width).all()
                and (boxes[:, 1::2] <= height).all()), (code, boxes)
        counts.add(len(boxes))
    assert counts > {2}  # some draws cut an object away (seeds of test_reference_... above)


@needs_detectron2
def test_zoo_training_settings_are_those_nadirs_trainer_reproduces():
    """What DefaultTrainer would read from each yaml zoo config for training (engine/
    defaults.py L407-419, L462-499; data/build.py L469-515; data/dataset_mapper.py L86-101)
    that nadir's trainer does not read: each is at the value nadir's replacement matches."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    for model in ("d2_faster_rcnn_r50_fpn", "d2_faster_rcnn_r101_fpn", "d2_retinanet_r50_fpn"):
        zoo = get_cfg()
        zoo.merge_from_file(model_zoo.get_config_file(d2.zoo_config(model)))
        assert zoo.SOLVER.REFERENCE_WORLD_SIZE == 0  # auto_scale_workers: nothing to scale
        assert zoo.SOLVER.CLIP_GRADIENTS.ENABLED is False  # the recipes' clip_grad_norm: None
        assert zoo.SOLVER.AMP.ENABLED is False  # nadir: training.amp (on by default on GPUs)
        assert zoo.TEST.PRECISE_BN.ENABLED is False and zoo.TEST.EVAL_PERIOD == 0  # no hooks
        assert zoo.INPUT.CROP.ENABLED is False  # DatasetMapper adds no crop
        assert zoo.DATALOADER.SAMPLER_TRAIN == "TrainingSampler"  # nadir: SeededBatches
        assert not (zoo.MODEL.MASK_ON or zoo.MODEL.KEYPOINT_ON or zoo.MODEL.LOAD_PROPOSALS)
        assert zoo.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR"  # build_lr_scheduler's
        assert (zoo.SOLVER.BIAS_LR_FACTOR, zoo.SOLVER.WEIGHT_DECAY_BIAS) == (1.0, None)


@needs_detectron2
@pytest.mark.parametrize("model", ["d2_faster_rcnn_r50_fpn", "d2_fcos_r50_fpn"])
def test_reference_clip_grad_norm_clips_each_parameter_as_detectron2(model):
    """A `clip_grad_norm` set on a detectron2 model under `reference` is detectron2's
    SOLVER.CLIP_GRADIENTS (type norm: every parameter's gradient on its own), for the yaml
    configs through build_optimizer, for the LazyConfig FCOS through the same wrapper; without
    it the optimiser does not clip (the zoo configs' setting)."""
    import torch

    built, _, config = d2.build_detectron2_model(model, 2, 64, "none", "cpu")
    plan = _reference_plan(model)
    plain, _ = d2.reference_solver(model, built, plan, config)
    assert type(plain) is torch.optim.SGD
    _, _, config = d2.build_detectron2_model(model, 2, 64, "none", "cpu")
    clipped, _ = d2.reference_solver(model, built, dataclasses.replace(plan, clip_grad_norm=0.5),
                                     config)
    assert type(clipped).__name__ == "SGDWithGradientClip"
    params = [p for g in clipped.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.full_like(p, 100.0)
    clipped.step()
    norms = [float(p.grad.norm()) for p in params]
    # each at 0.5 (their total norm would have left each far below it)
    assert all(0.45 < n < 0.501 for n in norms) and len(params) > 100


@needs_detectron2
def test_common_clips_the_total_gradient_norm_after_backward():
    """Under `recipe: common` the detectron2 backend clips as nadir's loop does: the total
    norm of every gradient the optimiser steps, after backward."""
    import torch

    params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 40, 500)]
    optimizer = torch.optim.AdamW(params)
    for p in params:
        p.grad = torch.full_like(p, 2.0)
    hook = d2._clip_hook(0.5)
    hook.trainer = type("Trainer", (), {"optimizer": optimizer})()
    hook.after_backward()
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert float(total) == pytest.approx(0.5, rel=1e-4)
    assert float(params[0].grad[0]) == pytest.approx(float(params[2].grad[0]))  # one factor


@needs_detectron2
def test_detectron2_streams_chips_from_s3_writing_none_to_disk(tmp_path, s3, monkeypatch):
    """A detectron2 job reads its chips where they are, as the torchvision loop does: from an
    S3 shard by ranged reads (the local copy deleted) it trains with the losses of a run on
    the local shard, and its working folder never holds a chip file."""
    import shutil
    import tempfile

    data = tiny_chips.build(tmp_path / "data", chips=4)
    hp = tiny_chips.hyperparameters(iterations=2, log_interval=1, lr=0.0002, amp=False)
    d2.Detectron2Backend().train(
        tiny_chips.train_job(data, "d2_faster_rcnn_r50_fpn", hp, tmp_path / "local"))
    client = s3.client()
    client.create_bucket(Bucket="nadir-d2-stream")
    client.upload_file(str(data["shard"]), "nadir-d2-stream", "chips/shard-000.tar")
    data["shard"].unlink()
    monkeypatch.setenv("NADIR_STORAGE_S3_ENDPOINT", s3.endpoint)
    for name, value in s3.env().items():
        if name.startswith("SNAKEMAKE_STORAGE_S3_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    left, remove = [], shutil.rmtree

    def rmtree_noting_files(path, **kwargs):
        left.extend(p.relative_to(path).as_posix() for p in Path(path).rglob("*")
                    if p.is_file())
        remove(path, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree_noting_files)
    job = tiny_chips.train_job(data, "d2_faster_rcnn_r50_fpn", hp, tmp_path / "streamed")
    job.shards = ["s3://nadir-d2-stream/chips/shard-000.tar"]
    assert d2.Detectron2Backend().train(job)["chips"] == 4
    assert left == [] and list((tmp_path / "tmp").iterdir()) == []
    local, streamed = ([row["loss"] for row in json.loads(
        (tmp_path / run / "train_log.json").read_text())] for run in ("local", "streamed"))
    assert streamed == local and len(local) == 2


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


def _reference_plan(model: str, chips: int = 1600, batch: int = 4):
    from nadir.config import model_hyperparameters
    from nadir.train.recipes import training_plan, with_length

    config = {"training": tiny_chips.hyperparameters(recipe="reference", batch_size=batch),
              "models": {model: {"pretrained": "none"}}}
    return training_plan(model, with_length(model_hyperparameters(config, model), chips, batch),
                         chips, batch)


def test_reference_solver_settings_scale_the_zoo_schedule_to_the_run():
    # faster_rcnn_R_50_FPN_3x: BASE_LR 0.02 for 16 images, steps 210k and 250k of 270k
    # (36.5 COCO epochs), warm-up 1000: at 4 images, 400 iterations per epoch of 1600 chips
    plan = _reference_plan("d2_faster_rcnn_r50_fpn")
    iterations = -(-270000 * 16 * 1600 // (118287 * 4))  # ceil
    assert d2.solver_settings(plan) == {
        "SOLVER.IMS_PER_BATCH": 4, "SOLVER.BASE_LR": pytest.approx(0.005),
        "SOLVER.WEIGHT_DECAY": 1e-4, "SOLVER.MAX_ITER": iterations,
        "SOLVER.STEPS": (round(iterations * 210 / 270), round(iterations * 250 / 270)),
        "SOLVER.WARMUP_ITERS": 1000, "SOLVER.CLIP_GRADIENTS.ENABLED": False,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0}
    # a run too short for distinct steps inside it keeps those that fit, once each
    short = dataclasses.replace(plan, iterations=3, milestones=(2, 2))
    assert d2.scheduler_milestones(short) == [2]
    assert d2.scheduler_milestones(dataclasses.replace(short, milestones=(3, 3))) == []


def test_reference_multi_scale_is_carried_to_the_chip_size():
    # detectron2's short sides 640..800 (max 1333) are 0.8..1.0 of the largest
    assert d2.chip_train_sizes((640, 672, 704, 736, 768, 800), 1333, 256) == (
        (205, 215, 225, 236, 246, 256), 427)


@needs_detectron2
def test_reference_uses_detectron2s_solver_with_the_zoo_configs_values():
    import torch
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    zoo = get_cfg()
    zoo.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"))
    plan = _reference_plan("d2_faster_rcnn_r50_fpn")
    # the recipe's values are the zoo config's own
    assert plan.lr * 16 / 4 == pytest.approx(zoo.SOLVER.BASE_LR) and zoo.SOLVER.IMS_PER_BATCH == 16
    assert [m / plan.iterations for m in plan.milestones] == pytest.approx(
        [s / zoo.SOLVER.MAX_ITER for s in zoo.SOLVER.STEPS], abs=1e-3)
    assert plan.warmup_iterations == zoo.SOLVER.WARMUP_ITERS
    model, _, config = d2.build_detectron2_model("d2_faster_rcnn_r50_fpn", 2, 64, "none", "cpu")
    optimizer, scheduler = d2.reference_solver("d2_faster_rcnn_r50_fpn", model, plan, config)
    assert isinstance(optimizer, torch.optim.SGD)
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
             for p in m.parameters()}
    for group in optimizer.param_groups:
        assert group["momentum"] == 0.9
        assert group["weight_decay"] == (0.0 if id(group["params"][0]) in norms else 1e-4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005 * 0.001)
    augmentations = d2.reference_augmentations("d2_faster_rcnn_r50_fpn", 256, config)
    assert [type(a).__name__ for a in augmentations] == ["ResizeShortestEdge", "RandomFlip"]
    assert tuple(augmentations[0].short_edge_length) == (205, 215, 225, 236, 246, 256)


@needs_detectron2
@pytest.mark.slow
@pytest.mark.parametrize("model", ["d2_faster_rcnn_r50_fpn", "d2_fcos_r50_fpn"])
def test_reference_recipe_trains_with_detectron2s_solver_and_augmentation(model, tmp_path):
    """Under `reference` the run's lr follows detectron2's warm-up multi-step scheduler (from
    0.001 of the scaled BASE_LR) and its resize + flip feed the model; a resumed run repeats
    the uninterrupted one's logged losses."""
    from nadir.train.checkpoints import LocalCheckpoints

    data = tiny_chips.build(tmp_path / "data", chips=4)
    hp = tiny_chips.hyperparameters(recipe="reference", iterations=6, log_interval=2,
                                    batch_size=2, lr=0.01, lr_batch=16, amp=False,
                                    weight_decay=1e-4, clip_grad_norm=None)
    job = tiny_chips.train_job(data, model, hp, tmp_path / "out",
                               checkpoints=LocalCheckpoints(tmp_path / "ck"), checkpoint_every=2)
    backend = d2.Detectron2Backend()
    assert backend.train(job)["iterations"] == 6
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    from nadir.train.recipes import training_plan

    plan = training_plan(model, hp, 4, 2)
    assert plan.lr == 0.01 * 2 / 16  # SGD: scaled linearly from 16 to 2 images
    assert plan.warmup_iterations == 6  # detectron2's 1000, capped at the run
    # detectron2's WarmupParamScheduler: a warm-up over the whole run rises linearly from
    # 0.001 to the schedule's value at its end (x0.1 per step inside the run: the plan's
    # milestones); each row's lr is its last step's
    end = 0.1 ** len(d2.scheduler_milestones(plan))
    assert [e["lr"] for e in log] == pytest.approx(
        [plan.lr * (0.001 + (end - 0.001) * step / 6) for step in (1, 3, 5)], rel=1e-3)
    assert all(e["loss"] == e["loss"] and e["loss"] < 1e4 for e in log)  # finite
    job.outputs = tiny_chips.train_outputs(tmp_path / "rerun")
    assert backend.train(job)["resumed_from"] == 4
    rerun = json.loads((tmp_path / "rerun" / "train_log.json").read_text())
    assert [e["loss"] for e in rerun] == pytest.approx([e["loss"] for e in log])
