"""Config validation against workflow/schemas/config.schema.yaml, with defaults filled in.

Errors name the offending key by its dotted path and list what is allowed, and every error is
reported at once, so a typo never starts a job.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from nadir.errors import NadirError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


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


def load_schema(model_names: list[str]) -> dict:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    training = copy.deepcopy(schema["properties"]["training"])
    for prop in training["properties"].values():
        prop.pop("default", None)
    training.pop("default", None)
    training["type"] = ["object", "null"]  # `model_name:` with nothing after it means no overrides
    schema["$defs"]["overrides"] = training
    schema["properties"]["models"]["propertyNames"] = {"enum": sorted(model_names)}
    return schema


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
    from nadir.training.catalogue import CATALOGUE

    every = (given.get("checkpoints") or {}).get("every")
    for model in config["models"]:
        hp = (model_hyperparameters(config, model) if model in CATALOGUE  # else a test's name
              else {**config["training"], **(config["models"][model] or {})})
        if hp["warmup_iterations"] > hp["iterations"]:
            problems.append(f"config key training.warmup_iterations (model {model}): "
                            f"{hp['warmup_iterations']} is more than its {hp['iterations']} "
                            "iterations, so the learning rate would never decay")
        if every and every > hp["iterations"]:
            problems.append(f"config key checkpoints.every: {every} is more than the "
                            f"{hp['iterations']} iterations of model {model}, so it would "
                            "never write a checkpoint (0 turns checkpoints off)")
    return problems


def validate(config: dict, model_names: list[str]) -> dict:
    """Validate in place, filling defaults; raise ConfigError listing every problem."""
    given = copy.deepcopy(config)  # what the user wrote, before defaults are filled in
    schema = load_schema(model_names)
    validator = DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(e) for e in errors] or [*_not_applying(given, schema),
                                                  *_contradictions(given, config)]
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")
    chip = config["chipping"]
    if chip["overlap"] >= chip["size"]:
        raise ConfigError(
            f"config key chipping.overlap: {chip['overlap']} must be smaller than "
            f"chipping.size ({chip['size']})")
    from nadir.chipping import ChipParams

    try:  # the rules that JSON Schema cannot express (e.g. 1 or 3 bands)
        ChipParams.from_config(chip)
    except NadirError as error:
        raise ConfigError(f"config key chipping: {error}") from None
    return config


def model_hyperparameters(config: dict, model: str) -> dict:
    """The training settings of one model: `training`, then the catalogue's defaults for this
    model (e.g. a lower lr where the shared one diverges), then the user's overrides on top."""
    from nadir.training.catalogue import CATALOGUE

    return {**config["training"], **CATALOGUE[model].hyperparameters,
            **(config["models"][model] or {})}
