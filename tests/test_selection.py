"""`training.eval_every`: selection scores while training, best and last weights, live curves."""

from __future__ import annotations

import json

import pytest
import tiny_chips
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nadir.train.checkpoints import open_store
from nadir.train.loop import LoopBackend

MODEL = "ssdlite320_mobilenet_v3_large"


def test_selection_scores_pick_the_best_weights_and_reach_tensorboard(tmp_path):
    data = tiny_chips.build(tmp_path / "chips", chips=4)
    hp = tiny_chips.hyperparameters(iterations=4, eval_every=2, select="best")
    store = open_store(str(tmp_path / "checkpoints"))
    job = tiny_chips.train_job(data, MODEL, hp, tmp_path / "run", checkpoints=store,
                               checkpoint_every=2, selection_json=data["coco"])
    result = LoopBackend().train(job)

    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    scored = [e for e in log if "selection_AP" in e]
    assert [e["iteration"] for e in scored] == [2, 4]
    assert all(0 <= e["selection_AP"] <= e["selection_AP50"] <= 1 for e in scored)
    best = max(scored, key=lambda e: (e["selection_AP"], e["selection_AP50"], -e["iteration"]))
    assert result["selection"]["best"] == best
    assert result["selection"]["weights"] == "best"
    assert result["selection"]["scored_on"].startswith("val")

    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    kept = {name: torch.load(tmp_path / "checkpoints" / f"{name}.pt", weights_only=True)
            for name in ("best", "last")}
    assert saved["weights"] == "best" and saved["selection"] == best
    for key, tensor in saved["state_dict"].items():
        assert torch.equal(tensor, kept["best"]["state_dict"][key])

    events = EventAccumulator(str(tmp_path / "checkpoints" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/loss", "lr", "images_per_second", "selection/AP", "selection/AP50"} <= tags
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("selection/AP")] == [
        (e["iteration"], round(e["selection_AP"], 6)) for e in scored]


def test_with_a_weight_average_the_selection_scores_and_keeps_the_averaged_weights(
        tmp_path, monkeypatch):
    """Where the recipe keeps a weight average (YOLOX's EMA under `reference`; here a strong
    one on the fast SSD), model.pt holds the average: the selection split scores those weights
    and `best` keeps them, with their recorded score. Scores arrive from the scoring process
    while training goes on (every step here, so some are pending across steps); a run
    interrupted at its checkpoint and resumed ends as the uninterrupted one, scores and all."""
    from interrupted import Interrupted, InterruptingStore, assert_same_run

    from nadir.protocols.coco import coco_evaluation
    from nadir.train import loop, selection
    from nadir.train.checkpoints import LocalCheckpoints
    from nadir.train.data import ShardChips
    from nadir.train.models import build_detector
    from nadir.train.recipes import ModelEMA

    monkeypatch.setattr(loop, "model_ema", lambda model, plan: ModelEMA(model, 0.5, ramp=1.0))
    handed, predict = [], selection.detections

    def recorded(*args, **kwargs):  # what the training process hands to the scoring process
        handed.append(predict(*args, **kwargs))
        return handed[-1]

    monkeypatch.setattr(selection, "detections", recorded)
    data = tiny_chips.build(tmp_path / "chips", chips=4)
    hp = tiny_chips.hyperparameters(iterations=4, eval_every=1, select="best")

    def job(out: str, store):
        return tiny_chips.train_job(data, MODEL, hp, tmp_path / out, checkpoints=store,
                                    checkpoint_every=2, selection_json=data["coco"])

    best = LoopBackend().train(job("run", open_store(str(tmp_path / "kept"))))["selection"][
        "best"]
    scored_by_run = handed[:4]

    def detections_of(weights: dict) -> list[dict]:
        model = build_detector(MODEL, 2, 64, "none")
        model.load_state_dict(weights)
        return predict(model.eval(), ShardChips(data["coco"], [data["shard"]]),
                       tiny_chips.CATEGORIES, hp["batch_size"], torch.device("cpu"))

    # the last scoring was of the average that last.pt (and model.pt with `select: last`) holds
    last = torch.load(tmp_path / "kept" / "last.pt", weights_only=True)["state_dict"]
    assert detections_of(last) == scored_by_run[3]
    # model.pt holds the weights scored best, with their score
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["selection"] == best
    found = detections_of(saved["state_dict"])
    assert found == scored_by_run[best["iteration"] - 1]
    metrics = coco_evaluation(json.loads(data["coco"].read_text()), found, 100)["metrics"]
    assert (best["selection_AP"], best["selection_AP50"]) == (metrics["AP"], metrics["AP50"])

    with pytest.raises(Interrupted):
        LoopBackend().train(job("resumed", InterruptingStore(tmp_path / "ck")))
    resumed = LoopBackend().train(job("resumed", LocalCheckpoints(tmp_path / "ck")))
    assert resumed["resumed_from"] == 2 and resumed["selection"]["best"] == best
    assert_same_run(tmp_path / "run", tmp_path / "resumed")
