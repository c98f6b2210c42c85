"""Config validation against workflow/schemas/config.schema.yaml, with defaults filled in.

Errors name the offending key by its dotted path and list what is allowed, and every error is
reported at once, so a typo never starts a job.
"""

from __future__ import annotations

import copy

from jsonschema import Draft202012Validator, validators

from nadir.config.catalogue import CATALOGUE
from nadir.config.runs import (
    cell_name,
    dataset_chipping,
    model_hyperparameters,
    runs,
    sweep_cells,
)
from nadir.core.errors import NadirError
from nadir.core.schema import renamed_keys, schema


class ConfigError(NadirError):
    pass


def _with_defaults(validator_class):
    """A validator that writes each missing property's default into the instance first."""
    check_properties = validator_class.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": fill_then_check})


DefaultFillingValidator = _with_defaults(Draft202012Validator)


def _without_defaults(section: dict) -> dict:
    """A section's schema for overriding it: the same keys and checks, no defaults (what an
    override leaves out comes from the section), and null meaning no overrides."""
    overrides = copy.deepcopy(section)
    for prop in overrides["properties"].values():
        prop.pop("default", None)
    overrides.pop("default", None)
    overrides["type"] = ["object", "null"]  # `name:` with nothing after it means no overrides
    return overrides


def load_schema(model_names: list[str]) -> dict:
    schema_ = schema()
    training = _without_defaults(schema_["properties"]["training"])
    schema_["$defs"]["overrides"] = training
    schema_["$defs"]["chipping_overrides"] = _without_defaults(schema_["properties"]["chipping"])
    schema_["$defs"]["sweep_grid"] = {
        **schema_["$defs"]["sweep_grid"], "additionalProperties": False,
        "properties": {key: {"type": "array", "minItems": 1, "items": prop}
                       for key, prop in training["properties"].items()}}
    models = {"enum": sorted(model_names)}
    schema_["properties"]["models"]["propertyNames"] = models
    schema_["properties"]["sweeps"]["propertyNames"] = models
    schema_["$defs"]["dataset"]["properties"]["models"]["propertyNames"] = models
    return schema_


def _describe(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return (f"config key {path}: unknown key(s) {extra}; allowed keys: {allowed}")
    if error.validator == "propertyNames":
        allowed = error.schema["propertyNames"].get("enum")
        bad = [k for k in error.instance if allowed is not None and k not in allowed]
        if allowed is not None:
            return f"config key {path}: unknown name(s) {bad}; allowed: {allowed}"
    if error.validator == "enum":
        return (f"config key {path}: {error.instance!r} is not allowed; "
                f"allowed values: {error.validator_value}")
    if error.validator == "type":
        return f"config key {path}: expected {error.validator_value}, got {error.instance!r}"
    return f"config key {path}: {error.message}"


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    return scheme if scheme in ("http", "https", "s3") else "file"


def _not_applying(given: dict, schema: dict) -> list[str]:
    """Keys the user wrote that do nothing for their dataset's format (schema `x-formats`) or
    source entry's kind of URL (`x-schemes`)."""
    dataset_keys = schema["$defs"]["dataset"]["properties"]
    source_keys = schema["$defs"]["source"]["properties"]
    problems = []
    for name, dataset in (given.get("datasets") or {}).items():
        fmt = dataset.get("format")
        for key in dataset:
            formats = dataset_keys.get(key, {}).get("x-formats")
            if formats and fmt not in formats:
                problems.append(f"config key datasets.{name}.{key}: does not apply to format "
                                f"{fmt!r} (only to {', '.join(formats)}); remove it")
        for i, entry in enumerate(dataset.get("source") or []):
            scheme = _scheme(str(entry.get("url", "")))
            for key in entry:
                schemes = source_keys.get(key, {}).get("x-schemes")
                if schemes and scheme not in schemes:
                    problems.append(f"config key datasets.{name}.source.{i}.{key}: does not "
                                    f"apply to a {scheme} source (only to "
                                    f"{', '.join(schemes)}); remove it")
        split = dataset.get("split") or {}
        if fmt == "xview" and split.get("method") == "official":
            problems.append(f"config key datasets.{name}.split.method: xView has no official "
                            "split; remove it (the split is always seeded)")
        if split.get("method", "official") == "official" and fmt != "xview":
            problems += [f"config key datasets.{name}.split.{key}: applies only to "
                         "split.method: seeded; set that or remove it"
                         for key in ("val_fraction", "seed") if key in split]
    return problems


def _contradictions(given: dict, config: dict) -> list[str]:
    """Training settings that defeat each other, per model as its settings resolve."""
    problems = []
    every = (given.get("checkpoints") or {}).get("every")
    for model in config["models"]:
        hp = model_hyperparameters(config, model)
        if hp["epochs"] is not None:
            continue  # its iterations follow from the chip count, known when it trains
        if hp["recipe"] == "common" and hp["warmup_iterations"] > hp["iterations"]:
            problems.append(f"config key training.warmup_iterations (model {model}): "
                            f"{hp['warmup_iterations']} is more than its {hp['iterations']} "
                            "iterations, so the learning rate would never decay")
        if every and every > hp["iterations"]:
            problems.append(f"config key checkpoints.every: {every} is more than the "
                            f"{hp['iterations']} iterations of model {model}, so it would "
                            "never write a checkpoint (0 turns checkpoints off)")
    return problems


def _renamed(given: dict) -> list[str]:
    """The keys of earlier versions the user wrote, each with the key that replaced it (the
    schema's `x-renamed`)."""
    problems = []
    for old, new in renamed_keys().items():
        section, _, key = old.partition(".")
        if isinstance(given.get(section), dict) and key in given[section]:
            problems.append(f"config key {old} was replaced by {new['key']}: {new['why']} "
                            f"Remove {old} (config/README.md, Renamed keys)")
    return problems


def validate(config: dict, model_names: list[str]) -> dict:
    """Validate in place, filling defaults; raise ConfigError listing every problem."""
    given = copy.deepcopy(config)  # what the user wrote, before defaults are filled in
    schema_ = load_schema(model_names)
    validator = DefaultFillingValidator(schema_)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = _renamed(given) or [_describe(e) for e in errors] or [
        *_not_applying(given, schema_), *_contradictions(given, config)]
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")
    from nadir.raster.chip_params import ChipParams

    for key, chip in [("chipping", config["chipping"])] + [
            (f"datasets.{d}.chipping", dataset_chipping(config, d))
            for d in sorted(config["datasets"]) if config["datasets"][d]["chipping"]]:
        if chip["overlap"] >= chip["size"]:
            raise ConfigError(f"config key {key}.overlap: {chip['overlap']} must be smaller "
                              f"than {key}.size ({chip['size']})")
        try:  # the rules that JSON Schema cannot express (e.g. 1 or 3 bands)
            ChipParams.from_config(chip)
        except NadirError as error:
            raise ConfigError(f"config key {key}: {error}") from None
    _check_sweeps(config)
    _check_selection(config)
    _check_bands(config)
    return config


def _check_bands(config: dict) -> None:
    """Chips that are not 8-bit RGB (or grey) JPEG/PNG need a model that can take them."""
    from nadir.raster.chip_params import ChipParams

    for run in runs(config):
        chips = ChipParams.from_config(dataset_chipping(config, run.dataset))
        if CATALOGUE[run.model].backend == "detectron2" and chips.image_format == "tiff":
            raise ConfigError(
                f"model {run.model} on {run.dataset}: detectron2 models take 8-bit RGB chips "
                f"(JPEG or PNG), not TIFF chips ({chips.model_bands} band(s)): nadir's "
                "detectron2 adapter feeds its model zoo configs' 3-band stems and pixel "
                "statistics and adapts neither; use a torchvision, yolox or transformers model "
                "(docs/multispectral.md)")


def _check_sweeps(config: dict) -> None:
    """What the schema cannot say about sweeps and per-dataset model settings."""
    for dataset in sorted(config["datasets"]):
        for model in sorted(config["datasets"][dataset]["models"]):
            if model not in config["models"]:
                raise ConfigError(f"config key datasets.{dataset}.models.{model}: {model} is "
                                  "not in `models`, so it is not trained")
    for model in sorted(config["sweeps"]):
        if model not in config["models"]:
            raise ConfigError(f"config key sweeps.{model}: {model} is not in `models`; add it "
                              "there to sweep it")
        cells = sweep_cells(config, model)
        if not cells:
            raise ConfigError(f"config key sweeps.{model}: give `cells` or `grid`")
        if config["repeats"] > 1 and any("seed" in cell for cell in cells):
            raise ConfigError(f"config key sweeps.{model}: sweeps over `seed` and `repeats` "
                              "> 1 both set seeds; use one of them")
        names = [cell_name(model, cell) for cell in cells]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"config key sweeps.{model}: cells {repeated} appear twice")


def _check_selection(config: dict) -> None:
    """`select: best` needs selection scores, which only the torchvision loop computes."""
    for run in runs(config):
        where = f"run {run.name} on {run.dataset}"
        if run.hp["select"] == "best" and not run.hp["eval_every"]:
            raise ConfigError(f"config key training.select: best needs training.eval_every > 0 "
                              f"({where})")
        if run.hp["eval_every"] and CATALOGUE[run.model].backend == "detectron2":
            raise ConfigError(f"config key training.eval_every: not supported by the "
                              f"detectron2 backend yet ({where})")
