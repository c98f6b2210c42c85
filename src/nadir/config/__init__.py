"""The config: its validation against the schema (defaults filled in, every problem named by its
dotted key, renamed keys named with their replacement), the runs it asks for, the model
catalogue its `models` keys name, and the generated reference (config/README.md)."""

from nadir.config.runs import Run, dataset_chipping, model_hyperparameters, runs
from nadir.config.validation import ConfigError, validate

__all__ = ["ConfigError", "Run", "dataset_chipping", "model_hyperparameters", "runs",
           "validate"]
