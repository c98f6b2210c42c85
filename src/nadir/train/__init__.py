"""The train stage: a catalogue model trained on a dataset's chips, behind one backend interface.

`train` is the train job (`nadir.train.runner`); `backends` defines the job, the interface and
the registry of backends; `loop` is the training loop torchvision, transformers and yolox
models share, `detectron2` the adapter to detectron2's trainer; `checkpoints` and `weights`
keep what a run resumes from and starts from. The other stages use a trained model through
`predict_chips` (evaluation) and `window_detector` (inference).
"""

from __future__ import annotations

from pathlib import Path

from nadir.train.runner import run, train
from nadir.train.weights import fetch_catalogue_weights

__all__ = ["device_name", "fetch_catalogue_weights", "predict_chips", "run", "train",
           "window_detector"]


def device_name() -> str:
    """The device predictions and training run on here: "cuda" or "cpu"."""
    from nadir.train.loop import device_name as name

    return name()


def predict_chips(weights: Path, coco_json: Path, shards: list[str], settings: dict,
                  threads: int = 1) -> list[dict]:
    """COCO detections of a model.pt on every chip of a COCO split (`settings`:
    score_threshold, max_detections, batch_size), by the backend that trained it."""
    from nadir.train.backends import backend_of_weights

    return backend_of_weights(weights).predict(weights, coco_json, shards, settings, threads)


def window_detector(weights: Path, score_threshold: float, max_detections: int,
                    threads: int = 1):
    """(detect, categories, chip parameters) of a model.pt, for inference on new scenes
    (`nadir.train.loop.window_detector`)."""
    from nadir.train.loop import window_detector as detector

    return detector(weights, score_threshold, max_detections, threads)
