"""Experiment configuration: defaults, validation against the JSON schema, and the checks a schema cannot make
(``soupflow.plan.checks``), resolved once when Snakemake parses the workflow.

Every problem is reported as one line that names the key and what is allowed, before any job starts.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Iterator, Mapping

import jsonschema
import yaml

from soupflow.plan.catalog import (
    AUGMENTATIONS,
    BN_IMAGES,
    BN_STATISTICS,
    CORRUPTIONS,
    DATA_FORMATS,
    DATASETS,
    HYPERPARAMETER_NAMES,
    HYPERPARAMETERS,
    PRETEXT_TASKS,
    RECIPES,
    SCHEDULES,
    SHIFT_NAME_PATTERN,
    SOUP_INGREDIENTS,
    recipe_option_schemas,
)
from soupflow.plan.checks import check_runs, check_semantics
from soupflow.plan.errors import ConfigError
from soupflow.plan.grid import expand_analysis_runs, expand_runs
from soupflow.plan.params import LATE_DEFAULTS

#: package data (pip install . ships it); workflow/schemas/config.schema.yaml links here, as Snakemake's layout wants
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "replicates": None,
    "data": {
        "name": "fashion_mnist",
        "root": "/usr/share/datasets/fashion-mnist",
        "download": False,
        "image_size": None,
        "pretrain_fraction": 0.0,
        "val_fraction": 0.1,
        "test_fraction": LATE_DEFAULTS["data"]["test_fraction"],  # in this place: params compare dicts in order
        "max_train": None,
        "max_test": None,
        **LATE_DEFAULTS["data"],
        "shift_sets": {},
    },
    "model": {"name": "resnet10t", "kwargs": {}, "init": "pretrain", "file": None, "head_seed": 0,
              **LATE_DEFAULTS["model"]},
    "pretrain": {
        "epochs": 3, "lr": 0.05, "weight_decay": 5e-4, "batch_size": 128, "optimizer": "sgd",
        "momentum": 0.9, "schedule": "onecycle", "augmentation": "flip_shift", "seed": 0,
        "keep_every": 1, **LATE_DEFAULTS["pretrain"],
    },
    "finetune": {hp.name: hp.default for hp in HYPERPARAMETERS},
    # Too Salty, Table 1: the four optimizer perturbations (scales of lr, momentum, weight decay)
    "perturbations": {
        "salty1": {"lr": 0.7073, "momentum": 1.1009, "weight_decay": 0.8284},
        "salty2": {"lr": 1.2244, "momentum": 0.9247, "weight_decay": 1.1150},
        "salty3": {"lr": 0.5112, "momentum": 1.0695, "weight_decay": 1.1099},
        "salty4": {"lr": 0.5373, "momentum": 0.8594, "weight_decay": 0.9078},
    },
    "grid": {},
    "runs": [],
    "search": {"n": 0, "seed": 0, "space": {}},
    "soups": [{"recipe": "uniform"}, {"recipe": "greedy"}],
    "pool": {"checkpoints": [], "start": None},
    "training": {"precision": "auto", "checkpoint_every_steps": 200, "devices_per_run": 1, "sync_bn": False,
                 "compile": False, "workers": None},
    "evaluation": {"batch_size": "auto", "memory_mb": 1024, "device": "auto"},
    "plots": {"heatmap_axes": ["lr", "weight_decay"]},
    "analysis": {
        "pairs": 100, "seed": 0, "jobs": 2, "color_by": "branch_epoch",
        "bn": list(BN_STATISTICS), "bn_images": BN_IMAGES,  # models without BatchNorm: keep rows only
        "branching": {"epochs": [], "perturbations": []},
        "corruptions": {"types": list(CORRUPTIONS), "severities": [3], "max_images": 2000, "seed": 0},
    },
}


def merge_defaults(user: dict[str, Any], defaults: dict[str, Any] = DEFAULTS) -> dict[str, Any]:
    """Return the user's config with every missing key filled from ``defaults`` (dicts merge deeply)."""
    merged = copy.deepcopy(defaults)
    for key, value in (user or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "kwargs":
            merged[key] = merge_defaults(value, merged[key])
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _key_path(error) -> str:
    """Where in the config: ``soups[3].recipe`` (a list's items by index, as the semantic checks name them)."""
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
    return key.lstrip(".") or "(top level)"


def _describe(error) -> str:
    """Turn one jsonschema error into 'key: problem; allowed: ...'."""
    validator, schema = error.validator, error.schema
    key = _key_path(error)
    if validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = key if key != "(top level)" else "config"
        for name in extra:
            return f"config key '{_join(where, name)}' is unknown; allowed keys of {where}: {', '.join(allowed)}"
    if validator == "enum":
        return f"config key '{key}' is {error.instance!r}; allowed values: {', '.join(map(str, schema['enum']))}"
    if validator == "propertyNames":
        return f"config key '{key}' has an unknown name; {error.message}"
    if validator == "required":
        return f"config key '{key}' is missing a required key: {error.message}"
    if validator in {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"}:
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[validator]
        return f"config key '{key}' is {error.instance!r}; allowed: a number {op} {error.validator_value}"
    if validator == "minItems":
        return f"config key '{key}' is empty; allowed: a list of at least {error.validator_value} value(s)"
    if validator == "uniqueItems":
        return f"config key '{key}' is {error.instance!r}; allowed: a list without repeated values"
    if validator == "type":
        return f"config key '{key}' is {error.instance!r}; allowed type: {error.validator_value}"
    return f"config key '{key}': {error.message}"


def _join(prefix: str, name: str) -> str:
    return name if prefix == "config" else f"{prefix}.{name}"


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A value's schema with null no longer allowed (a grid axis lists values, "off" is the default's job)."""
    out = dict(schema)
    if isinstance(out.get("type"), list):
        out["type"] = [kind for kind in out["type"] if kind != "null"]
    if "enum" in out:
        out["enum"] = [value for value in out["enum"] if value is not None]
    return out


def _add_recipe_options(entry: dict[str, Any]) -> None:
    """A soup entry's keys: the shared ones the schema file spells, and every recipe's own options from their
    ``catalog.Option`` records. A recipe option named like a shared key (topk's ``k``) only sets its default,
    so its values must be the shared key's."""
    for name, schema in recipe_option_schemas().items():
        shared = entry.get(name)
        if shared is None:
            entry[name] = schema
        elif _values(shared) != _values(schema):
            raise RuntimeError(f"{SCHEMA_PATH}: soups option {name!r} differs from the recipe's Option record")


def _values(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if key != "description"}


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON schema, with its lists of names filled in from ``soupflow.plan.catalog`` (the one source):
    data sets, recipes, corruption types, the random-search dimensions, and one grid axis per hyperparameter
    (a list of values of that hyperparameter's schema). Treat the result as read-only: it is cached."""
    with open(SCHEMA_PATH) as handle:
        schema = yaml.safe_load(handle)
    hyperparameters = schema["$defs"]["hyperparameters"]["properties"]
    missing = set(HYPERPARAMETER_NAMES) ^ set(hyperparameters)
    if missing:
        raise RuntimeError(f"{SCHEMA_PATH}: $defs.hyperparameters and soupflow.plan.catalog differ in {sorted(missing)}")
    schema["$defs"]["augmentation"]["enum"] = list(AUGMENTATIONS)
    schema["$defs"]["schedule"]["enum"] = list(SCHEDULES)
    top = schema["properties"]
    top["pretrain"]["properties"]["task"]["enum"] = list(PRETEXT_TASKS)
    top["data"]["properties"]["name"]["enum"] = list(DATASETS)
    top["data"]["properties"]["format"]["enum"] = list(DATA_FORMATS)
    top["data"]["properties"]["shift_sets"]["propertyNames"] = {"pattern": f"^{SHIFT_NAME_PATTERN}$"}
    top["soups"]["items"]["properties"]["recipe"]["enum"] = list(RECIPES)
    _add_recipe_options(top["soups"]["items"]["properties"])
    top["soups"]["items"]["properties"]["ingredients"]["enum"] = list(SOUP_INGREDIENTS)
    top["analysis"]["properties"]["corruptions"]["properties"]["types"]["items"]["enum"] = list(CORRUPTIONS)
    top["analysis"]["properties"]["bn"]["items"]["enum"] = list(BN_STATISTICS)
    top["search"]["properties"]["space"]["propertyNames"]["enum"] = list(HYPERPARAMETER_NAMES)
    top["grid"]["properties"] = {name: {"type": "array", "minItems": 1, "items": _without_null(hyperparameters[name])}
                                 for name in HYPERPARAMETER_NAMES}
    return schema


def _scalar(text: str) -> Any:
    """Text read as YAML, and as a float where YAML 1.1 leaves exponents without a dot as text ("1e-2")."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(text)
        except ValueError:
            return value
    return value


def _texts(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """(path, text) of every string inside a nested ``--config`` value."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _texts(item, (*path, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _texts(item, (*path, index))


def _put(config: dict[str, Any], path: tuple, value: Any) -> None:
    *parents, last = path
    for part in parents:
        config = config[part]
    config[last] = value


def _error_paths(errors) -> set[tuple]:
    """Where the schema rejects a value, nested (oneOf, anyOf) errors included."""
    paths = set()
    for error in errors:
        paths.add(tuple(error.absolute_path))
        paths |= _error_paths(error.context or [])
    return paths


def typed_overrides(config: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` with the text of nested ``--config`` values read as the YAML the user typed.

    Snakemake reads ``--config 'pretrain={epochs: 2, lr: 0.02}'`` with YAML's BaseLoader, which keeps every
    nested scalar as text (``epochs: '2'``); the same YAML in a config file gives numbers, booleans and null.
    Every text of ``overrides`` (Snakemake's parsed ``--config``) is read as YAML at its place in the merged
    ``config``, unless the schema rejects the typed value there and the text was meant (a name "123").
    """
    config = copy.deepcopy(config)
    typed = {}
    for path, text in _texts(dict(overrides or {})):
        value = _scalar(text)
        if not isinstance(value, str):
            _put(config, path, value)
            typed[path] = text
    validator = jsonschema.Draft202012Validator(load_schema())
    for path in _error_paths(validator.iter_errors(config)) & set(typed):
        _put(config, path, typed[path])
    return config


def validate_schema(config: dict[str, Any]) -> None:
    """Check ``config`` against the JSON schema; raise ConfigError on the first (most specific) problem."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = list(validator.iter_errors(config))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        # best_match prefers shallow errors; report the deepest leaf of a oneOf/anyOf tree.
        while best.context:
            best = jsonschema.exceptions.best_match(best.context)
        raise ConfigError(_describe(best))


def resolve_config(user: dict[str, Any], check_model: bool = True, check_paths: bool = True,
                   overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate a user's config (``overrides``: the part that came from ``--config``, see ``typed_overrides``)
    and return it with defaults filled in. Raises ConfigError."""
    if not isinstance(user, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    user = typed_overrides(user, overrides)
    validate_schema(user)
    config = merge_defaults(user)
    validate_schema(config)
    check_semantics(config, check_model=check_model, check_paths=check_paths)
    try:
        runs = expand_runs(config)
        expand_analysis_runs(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_runs(config, runs)
    return config
