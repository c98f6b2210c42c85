"""The evaluate stage: a trained model scored on its dataset's val split, on the chips and on
whole scenes after merging the chips' detections, by COCO's metrics and the benchmark protocols.
Only `predict_val_chips` runs the model (a GPU job); `score_chip_files` and
`evaluate_scene_files` score its detections (CPU jobs)."""

from nadir.evaluate.chips import predict_val_chips, score_chip_files
from nadir.evaluate.scenes import evaluate_scene_files

__all__ = ["evaluate_scene_files", "predict_val_chips", "score_chip_files"]
