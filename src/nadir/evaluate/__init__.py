"""The evaluate stage: a trained model scored on its dataset's val split, on the chips
(`evaluate_model`) and on whole scenes after merging the chips' detections
(`evaluate_scene_files`), by COCO's metrics and the benchmark protocols."""

from nadir.evaluate.chips import evaluate_model
from nadir.evaluate.scenes import evaluate_scene_files

__all__ = ["evaluate_model", "evaluate_scene_files"]
