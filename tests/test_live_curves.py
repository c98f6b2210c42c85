"""TensorBoard event files written beside the checkpoints, read back with TensorBoard's reader."""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nadir.train.checkpoints import LiveCurves, open_store


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard would show for a run folder: {tag: [(step, value)]}."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_events_land_beside_the_checkpoints_and_tensorboard_reads_them(tmp_path):
    store = open_store(str(tmp_path / "checkpoints" / "run"))
    live = LiveCurves(store, tmp_path / "out")
    for step in (10, 20):
        live.add(step, {"loss/total": 1.0 / step, "lr": 0.001, "images_per_second": 12.5})
    live.publish()
    live.add(30, {"selection/AP": 0.25, "selection/AP50": 0.5})
    live.close()
    scalars = read_scalars(tmp_path / "checkpoints" / "run" / "tensorboard")
    assert scalars == {"loss/total": [(10, 0.1), (20, 0.05)], "lr": [(10, 0.001), (20, 0.001)],
                       "images_per_second": [(10, 12.5), (20, 12.5)],
                       "selection/AP": [(30, 0.25)], "selection/AP50": [(30, 0.5)]}
    assert not (tmp_path / "out").exists()


def test_a_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path):
    store = open_store(str(tmp_path / "run"))
    first = LiveCurves(store, tmp_path / "out")
    first.add(10, {"lr": 1.0})
    first.add(20, {"lr": 2.0})  # written after the checkpoint at 10, then the job was killed
    first.close()
    # The resumed run is a later process: TensorBoard reads event files in name order, and a
    # name starts with the second it was made in. Within one second, in one process, names
    # differ only by a counter, and "...9" sorts after "...10" (seen in CI).
    time.sleep(1.1)
    resumed = LiveCurves(store, tmp_path / "out", first_step=10)
    resumed.add(20, {"lr": 3.0})
    resumed.close()
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 2
    assert read_scalars(tmp_path / "run" / "tensorboard") == {"lr": [(10, 1.0), (20, 3.0)]}


def test_without_a_checkpoint_location_the_events_stay_beside_the_outputs(tmp_path):
    live = LiveCurves(None, tmp_path / "out")
    live.add(1, {"lr": 0.5})
    live.close()
    assert read_scalars(tmp_path / "out" / "tensorboard") == {"lr": [(1, 0.5)]}


def test_events_reach_s3(s3, tmp_path, monkeypatch):
    prefix = "live"
    for name, value in s3.env().items():  # the keys a training job gets from Snakemake
        monkeypatch.setenv(name, value)
    store = open_store(f"s3://nadir-live/{prefix}", s3.endpoint)
    live = LiveCurves(store, tmp_path / "out")
    live.add(5, {"loss/total": 2.0})
    live.close()
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="nadir-live")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith(f"{prefix}/tensorboard/events.out.tfevents.")
    local = tmp_path / "copy"
    local.mkdir()
    (local / keys[0].rsplit("/", 1)[1]).write_bytes(
        client.get_object(Bucket="nadir-live", Key=keys[0])["Body"].read())
    assert read_scalars(local) == {"loss/total": [(5, 2.0)]}


def test_loss_figure_gains_a_selection_panel_when_the_log_has_selection_scores(tmp_path):
    import json

    from PIL import Image

    from nadir.report.figures import plot_loss_curve

    losses = [{"iteration": i, "lr": 0.001, "seconds": i, "images_per_second": 9.0,
               "loss": 2.0 / i, "bbox_regression": 1.0 / i} for i in (5, 10)]
    widths = {}
    for name, log in (("plain", losses), ("selection", losses + [
            {"iteration": 10, "selection_AP": 0.3, "selection_AP50": 0.6}])):
        (tmp_path / f"{name}.json").write_text(json.dumps(log))
        plot_loss_curve(tmp_path / f"{name}.json", tmp_path / f"{name}.png", name)
        widths[name] = Image.open(tmp_path / f"{name}.png").size[0]
    assert widths["selection"] == widths["plain"] * 3 // 2  # a third panel of the same width
