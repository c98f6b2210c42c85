"""Training backends behind one interface: build a model from the catalogue, train, predict.

`run` trains one job end to end (what `nadir train` does); `backend` defines the job and the
backend interface, `registry` finds a backend by name, `loop` holds what their loops share.
"""

from nadir.train.runner import run

__all__ = ["run"]
