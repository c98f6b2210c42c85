"""The runs of a config: every (dataset, model, sweep cell, repeat) and its resolved settings.

A run's training settings are layered, each over the one before: `training`, the catalogue's
defaults for the model, `models.<model>`, `datasets.<dataset>.training`,
`datasets.<dataset>.models.<model>`, the sweep cell, then the repeat's seed
(`run_hyperparameters`). Under `recipe: reference` the family's recipe
(`nadir.config.recipes`) replaces `training`'s and the catalogue's values of the keys it sets;
the layers from `models.<model>` on still override it. A layer that sets `iterations` without
`epochs` measures the run in iterations again. `pretrained: auto` (the default) becomes the
weights the run starts from here, per dataset (`resolved_pretrained`), so that run.json, the
leaderboard, the run's fingerprint and the fetch_weights jobs all see the resolved value.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass

from nadir.config.catalogue import CATALOGUE, resolved_pretrained
from nadir.config.recipes import reference_hyperparameters


def _layered(config: dict, model: str, layers: list[dict],
             dataset_format: str | None = None) -> dict:
    """`training`, the catalogue's defaults for `model` (or, under `recipe: reference`, its
    recipe's values), then each of `layers` over the one before; `pretrained` resolved for a
    dataset of `dataset_format` (`auto`: `resolved_pretrained`)."""
    entry = CATALOGUE.get(model)
    hp = {**config["training"], **(entry.hyperparameters if entry else {})}
    chosen = [layer for layer in layers if layer]
    pretrained = next((la["pretrained"] for la in reversed(chosen) if "pretrained" in la),
                      hp.get("pretrained", "auto"))
    if entry is not None:
        pretrained = resolved_pretrained(model, pretrained, dataset_format)
    recipe = next((la["recipe"] for la in reversed(chosen) if "recipe" in la), hp.get("recipe"))
    if recipe == "reference" and entry is not None:
        hp |= reference_hyperparameters(model, pretrained)
    for layer in chosen:
        hp |= layer
        if "iterations" in layer and "epochs" not in layer:
            hp["epochs"] = None  # the layer measures the run in iterations
    return hp | {"pretrained": pretrained}


def model_hyperparameters(config: dict, model: str) -> dict:
    """The training settings of one model: `training`, then the catalogue's defaults for this
    model (e.g. a lower lr where the shared one diverges) or its reference recipe, then the
    user's overrides on top; `pretrained: auto` as for a real (not the sample) dataset."""
    return _layered(config, model, [config["models"].get(model) or {}])


def dataset_chipping(config: dict, dataset: str) -> dict:
    """One dataset's chipping settings: `chipping`, then the dataset's own `chipping` keys."""
    return {**config["chipping"], **(config["datasets"][dataset].get("chipping") or {})}


# Run names: `<model>`, then `--<key>-<value>` per swept key (sorted), then `--repeat-<n>` from
# the second repeat on. Only letters, digits, `.`, `_` and `-`: safe in paths, S3 keys and
# Snakemake wildcards.
REPEAT_SUFFIX = "--repeat-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Run:
    """One training run: a (dataset, model, sweep cell, repeat) and its resolved settings."""

    dataset: str
    name: str  # the run's folder under results/<dataset>/models/
    model: str  # the catalogue name
    cell: str  # `name` without the repeat suffix: the runs that differ only by seed share it
    repeat: int  # 1..repeats
    hp: dict


def _value_text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return _UNSAFE.sub("_", text)


def sweep_cells(config: dict, model: str) -> list[dict]:
    """The hyperparameter sets of a model: its `cells`, then every combination of its `grid`
    (one empty set, the plain run, without a sweep)."""
    sweep = config["sweeps"].get(model)
    if not sweep:
        return [{}]
    grid = sweep["grid"] or {}
    keys = sorted(grid)
    combinations = [dict(zip(keys, values, strict=True))
                    for values in itertools.product(*(grid[k] for k in keys))] if keys else []
    return [dict(cell or {}) for cell in sweep["cells"]] + combinations


def cell_name(model: str, cell: dict) -> str:
    return model + "".join(f"--{key}-{_value_text(cell[key])}" for key in sorted(cell))


def run_hyperparameters(config: dict, dataset: str, model: str, cell: dict | None = None,
                        repeat: int = 1) -> dict:
    """A run's training settings, each layer over the one before: `training`, the catalogue's
    defaults for the model, `models.<model>`, `datasets.<dataset>.training`,
    `datasets.<dataset>.models.<model>`, the sweep cell, then the repeat's seed."""
    spec = config["datasets"][dataset]
    hp = _layered(config, model, [config["models"].get(model) or {}, spec.get("training") or {},
                                  (spec.get("models") or {}).get(model) or {}, cell or {}],
                  spec["format"])
    return {**hp, "seed": hp["seed"] + repeat - 1}


def runs(config: dict) -> list[Run]:
    """Every training run of a validated config, dataset by dataset, in name order. The run
    names are the same for every dataset; the settings may differ."""
    table = []
    for dataset in sorted(config["datasets"]):
        for model in sorted(config["models"]):
            for cell in sweep_cells(config, model):
                base = cell_name(model, cell)
                for repeat in range(1, config["repeats"] + 1):
                    name = base if repeat == 1 else f"{base}{REPEAT_SUFFIX}{repeat}"
                    table.append(Run(dataset, name, model, base, repeat,
                                     run_hyperparameters(config, dataset, model, cell, repeat)))
    return sorted(table, key=lambda r: (r.dataset, r.name))
