"""`training.eval_every`: selection scores while training, best and last weights, live curves."""

from __future__ import annotations

import json

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
