"""Experiment configuration: defaults, validation against the JSON schema, and checks a schema cannot make.

Every problem is reported as one line that names the key and what is allowed, before any job starts.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from soupflow.grid import expand_analysis_runs, expand_runs
from soupflow.weights import WeightsError, resolve_file

#: package data (pip install . ships it); workflow/schemas/config.schema.yaml links here, as Snakemake's layout wants
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"

#: Hyperparameters of one fine-tune, in the order they are shown in tables.
HYPERPARAMETERS = (
    "lr", "weight_decay", "epochs", "batch_size", "label_smoothing", "augmentation", "optimizer",
    "momentum", "nesterov", "schedule", "warmup_fraction", "seed", "branch_epoch", "perturbation", "bn_statistics",
    "data_fraction", "mixup",
)
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "brightness", "pixelate", "jpeg")

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "name": "fashion_mnist",
        "root": "/usr/share/datasets/fashion-mnist",
        "download": False,
        "image_size": None,
        "pretrain_fraction": 0.0,
        "val_fraction": 0.1,
        "test_fraction": 0.0,
        "max_train": None,
        "max_test": None,
    },
    "model": {"name": "resnet10t", "kwargs": {}, "init": "pretrain", "file": None, "head_seed": 0},
    "pretrain": {
        "epochs": 3, "lr": 0.05, "weight_decay": 5e-4, "batch_size": 128, "optimizer": "sgd",
        "momentum": 0.9, "schedule": "onecycle", "augmentation": "flip_shift", "seed": 0,
        "keep_every": 1,
    },
    "finetune": {
        "lr": 0.01, "weight_decay": 1e-4, "epochs": 2, "batch_size": 128, "label_smoothing": 0.0,
        "augmentation": "none", "optimizer": "sgd", "momentum": 0.9, "nesterov": True,
        "schedule": "onecycle", "warmup_fraction": 0.3, "seed": 0, "branch_epoch": None,
        "perturbation": None, "bn_statistics": None, "data_fraction": None,
        "mixup": None,
    },
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
    "training": {"precision": "auto", "checkpoint_every_steps": 200},
    "evaluation": {"batch_size": 1000, "device": "auto"},
    "plots": {"heatmap_axes": ["lr", "weight_decay"]},
    "analysis": {
        "pairs": 100, "seed": 0, "jobs": 2, "color_by": "branch_epoch",
        "branching": {"epochs": [], "perturbations": []},
        "corruptions": {"types": list(CORRUPTIONS), "severities": [3], "max_images": 2000, "seed": 0},
    },
}


class ConfigError(ValueError):
    """An invalid configuration; the message is one line naming the key and what is allowed."""


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
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


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
    if validator == "type":
        return f"config key '{key}' is {error.instance!r}; allowed type: {error.validator_value}"
    return f"config key '{key}': {error.message}"


def _join(prefix: str, name: str) -> str:
    return name if prefix == "config" else f"{prefix}.{name}"


def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def _string_type_errors(errors) -> list:
    """Schema 'type' errors on string values where the schema wants no string, nested contexts included."""
    found = []
    for error in errors:
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if error.validator == "type" and isinstance(error.instance, str) and "string" not in expected:
            found.append(error)
        found += _string_type_errors(error.context or [])
    return found


def _scalar(text: str) -> Any:
    """Text read as YAML, and as a float where YAML 1.1 leaves exponents without a dot as text ("1e-2")."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(text)
        except ValueError:
            return value
    return value


def coerce_strings(config: dict[str, Any]) -> dict[str, Any]:
    """Values that arrive as text where the schema wants a number, boolean or null, read as YAML.

    Snakemake hands nested ``--config`` values over as strings (``--config 'grid={lr: [0.1], seed: [0, 1]}'``
    gives ``seed: ['0', '1']``); the same values written in a YAML file are numbers. Only values the schema
    rejects as strings are touched, so names and paths stay text.
    """
    validator = jsonschema.Draft202012Validator(load_schema())
    config = copy.deepcopy(config)
    for _ in range(1000):  # each pass fixes every reported value; nested ones may surface on the next
        changed = False
        for error in _string_type_errors(validator.iter_errors(config)):
            value = _scalar(error.instance)
            if isinstance(value, str):
                continue
            parent = config
            *path, last = list(error.absolute_path)
            for part in path:
                parent = parent[part]
            if parent[last] != value:
                parent[last], changed = value, True
        if not changed:
            return config
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


def check_model_name(model: dict[str, Any]) -> None:
    """``model.name`` must be a timm architecture. Where timm is not installed (a bare Snakemake that builds
    per-rule conda environments) the check is left to the first job, with a one-line note."""
    if model["name"].startswith(("hf-hub:", "hf_hub:")):
        return
    known = known_timm_models()
    if known is None:
        print("soupflow: timm is not installed beside Snakemake; the first job checks model.name", file=sys.stderr)
        return
    if model["name"].split(".")[0] not in known:
        stem = model["name"][:6]
        close = sorted(name for name in known if stem in name)[:8]
        hint = f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ConfigError(f"config key 'model.name' is {model['name']!r}, which timm does not know{hint}")


def known_timm_models() -> frozenset[str] | None:
    """timm's architecture names, cached per timm version under ~/.cache/soupflow; None without timm.

    Importing timm takes ~7 s on a small CPU; without the cache every Snakemake process (the main one and,
    on SLURM, two per job) would pay it just to validate `model.name`."""
    try:
        version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "soupflow" / f"timm-{version}-models.txt"
    with contextlib.suppress(OSError):
        names = cache.read_text().split()
        if names:
            return frozenset(names)
    import timm  # here: the Snakefile parses without timm (a bare Snakemake plans the workflow); 2.6 s

    names = timm.list_models()
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(names))
        os.replace(tmp, cache)
    return frozenset(names)


def _check_model_file(model: dict[str, Any]) -> None:
    """``model.file`` must exist when init = file needs it, or when init = timm names one."""
    spec = model.get("file")
    if model["init"] == "pretrain" or (model["init"] == "timm" and not spec):
        return
    try:
        exists = bool(spec) and os.path.isfile(resolve_file(spec))
    except WeightsError as error:
        raise ConfigError(f"config key {error}") from None
    if not exists:
        raise ConfigError(f"config key 'model.file' is {spec!r}; allowed: an existing .safetensors or .pth file "
                          f"(or package:NAME/path) when model.init is {model['init']!r}")


def kept_epochs(config: dict[str, Any]) -> list[int]:
    """Epochs of the pretraining trajectory kept as branch points (0 = before pretraining)."""
    if config["model"]["init"] != "pretrain":
        return [0]
    every, epochs = config["pretrain"]["keep_every"], config["pretrain"]["epochs"]
    return sorted({0, *range(every, epochs + 1, every)})


def _check_branch_epochs(config: dict[str, Any]) -> None:
    """Every branch epoch a user wrote must be a kept pretraining epoch; the error names where it was written."""
    written = [("analysis.branching.epochs", e) for e in config["analysis"]["branching"]["epochs"]]
    written += [("grid.branch_epoch", e) for e in config["grid"].get("branch_epoch", [])]
    written += [(f"runs[{i}].branch_epoch", run["branch_epoch"]) for i, run in enumerate(config["runs"])
                if run.get("branch_epoch") is not None]
    kept = kept_epochs(config)
    for key, epoch in written:
        if epoch not in kept:
            why = ("model.init is not 'pretrain', so there is no pretraining to branch from; set it to [] or remove it"
                   if config["model"]["init"] != "pretrain" else "see pretrain.epochs and pretrain.keep_every")
            raise ConfigError(f"config key '{key}' has {epoch}, which is not a kept pretraining epoch; allowed values: "
                              f"{', '.join(map(str, kept))} ({why})")


@dataclass(frozen=True)
class Reader:
    """What a data set reader (``data.name``) gives and needs: image channels, and the files or folders it
    reads in ``data.root`` (IDX files may be gzipped)."""

    channels: int
    needs: tuple[str, ...]


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: every ``data.name``; the schema's enum must list the same names (tests/test_config.py checks it)
READERS = {
    "fashion_mnist": Reader(1, IDX_FILES),
    "mnist": Reader(1, IDX_FILES),
    "cifar10": Reader(3, ("cifar-10-batches-py",)),
    "cifar100": Reader(3, ("cifar-100-python",)),
    "image_folder": Reader(3, ("train", "test")),  # decoded to RGB
}


def _check_data_root(data: dict[str, Any]) -> None:
    """``data.root`` must be a folder holding the data set (unless torchvision may download it)."""
    root = data.get("root")
    if data["name"] in {"cifar10", "cifar100"} and data["download"]:
        return
    if not root or not os.path.isdir(root):
        hint = " (install Debian's dataset-fashion-mnist or point data.root at the IDX files)" if data["name"] == "fashion_mnist" else ""
        raise ConfigError(f"config key 'data.root' is {root!r}, which is not an existing folder{hint}")
    missing = [name for name in READERS[data["name"]].needs
               if not any(os.path.exists(os.path.join(root, name + suffix)) for suffix in ("", ".gz"))]
    if missing:
        raise ConfigError(f"config key 'data.root' is {root!r}, which holds no {data['name']} data set: missing "
                          f"{', '.join(missing)}; allowed: a folder with {', '.join(READERS[data['name']].needs)}")


def _check_normalize(data: dict[str, Any]) -> None:
    """Given mean/std need one value, or one per channel (3 RGB values are averaged for grey images)."""
    given = data.get("normalize")
    if not isinstance(given, dict):
        return
    channels = READERS[data["name"]].channels
    allowed = sorted({1, channels, 3})
    for name in ("mean", "std"):
        if len(given[name]) not in allowed:
            raise ConfigError(f"config key 'data.normalize.{name}' has {len(given[name])} values; allowed: "
                              f"{' or '.join(map(str, allowed))} for {data['name']}'s {channels}-channel images")


#: Recipes that are baselines or ablations, not soups a user would deploy (plots leave them out of soup figures).
BASELINE_RECIPES = ("best_individual", "self_soup", "untrained")

#: Recipes that read the weights the fine-tunes started from (the soup rule then takes the init as input).
RECIPES_FROM_START = ("model_stock", "wise_ft")


#: data keys added after results folders existed, at the value that changes nothing: ``data_params`` leaves
#: them out, so that upgrading soupflow does not re-trigger finished data (and every job after it) through
#: Snakemake's params trigger
NEUTRAL_DATA = {"test_fraction": 0.0}


def data_params(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as the prepare_data rule's params: without keys at their neutral value (``NEUTRAL_DATA``)."""
    return {key: value for key, value in data.items() if key not in NEUTRAL_DATA or value != NEUTRAL_DATA[key]}


def wise_ft_base(spec: dict[str, Any]) -> str | None:
    """The soup a wise_ft entry interpolates toward (``base``, default best_individual); None for others."""
    return spec.get("base", "best_individual") if spec["recipe"] == "wise_ft" else None


def _check_soups(soups: list[dict[str, Any]]) -> None:
    names = [soup.get("name", soup["recipe"]) for soup in soups]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"config key 'soups' names {', '.join(duplicates)} more than once; give each entry a unique 'name'")
    bases = [name for name, soup in zip(names, soups) if soup["recipe"] != "wise_ft"]
    for index, soup in enumerate(soups):
        base = wise_ft_base(soup)
        if base is not None and base not in bases:
            raise ConfigError(f"config key 'soups[{index}].base' is {base!r}; allowed: the name of another soup "
                              f"entry that is not wise_ft ({', '.join(bases) or 'none configured'})")


def check_semantics(config: dict[str, Any], check_model: bool = True, check_paths: bool = True) -> None:
    """Checks beyond the schema: names that must exist, fractions that must fit, unique soup names."""
    data, model = config["data"], config["model"]
    _check_normalize(data)
    if data["pretrain_fraction"] + data["val_fraction"] + data["test_fraction"] >= 1:
        raise ConfigError("config keys 'data.pretrain_fraction' + 'data.val_fraction' + 'data.test_fraction' must be "
                          "< 1 so that images remain to fine-tune on")
    if model["init"] == "pretrain" and data["pretrain_fraction"] <= 0:
        raise ConfigError("config key 'data.pretrain_fraction' must be > 0 when model.init is 'pretrain'")
    if check_paths:
        _check_data_root(data)
        _check_model_file(model)
    if check_model:
        check_model_name(model)
    _check_soups(config["soups"])
    for axis in config["plots"]["heatmap_axes"]:
        if axis not in HYPERPARAMETERS:
            raise ConfigError(f"config key 'plots.heatmap_axes' has {axis!r}; allowed values: {', '.join(HYPERPARAMETERS)}")
    analysis = config["analysis"]
    if analysis["color_by"] not in HYPERPARAMETERS:
        raise ConfigError(f"config key 'analysis.color_by' is {analysis['color_by']!r}; allowed values: {', '.join(HYPERPARAMETERS)}")
    named = [("analysis.branching.perturbations", name) for name in analysis["branching"]["perturbations"]]
    named += [("grid.perturbation", name) for name in config["grid"].get("perturbation", [])]
    named += [(f"runs[{i}].perturbation", run["perturbation"]) for i, run in enumerate(config["runs"]) if run.get("perturbation")]
    for key, name in named:
        if name not in config["perturbations"]:
            raise ConfigError(f"config key '{key}' names perturbation {name!r}; allowed values: {', '.join(config['perturbations'])}")
    for name, spec in config["search"]["space"].items():
        if spec["distribution"] == "choice" and not spec.get("values"):
            raise ConfigError(f"config key 'search.space.{name}' needs 'values' for distribution 'choice'")
        if spec["distribution"] != "choice" and not ("low" in spec and "high" in spec and spec["low"] <= spec["high"]):
            raise ConfigError(f"config key 'search.space.{name}' needs 'low' <= 'high' for distribution {spec['distribution']!r}")
        if spec["distribution"] == "log_uniform" and spec["low"] <= 0:
            raise ConfigError(f"config key 'search.space.{name}.low' must be > 0 for distribution 'log_uniform'")
    _check_branch_epochs(config)


def resolve_config(user: dict[str, Any], check_model: bool = True, check_paths: bool = True) -> dict[str, Any]:
    """Validate a user's config and return it with defaults filled in. Raises ConfigError."""
    if not isinstance(user, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    user = coerce_strings(user)
    validate_schema(user)
    config = merge_defaults(user)
    validate_schema(config)
    check_semantics(config, check_model=check_model, check_paths=check_paths)
    try:
        runs = expand_runs(config)
        expand_analysis_runs(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    drawn = sorted({hp["branch_epoch"] for hp in runs.values() if hp.get("branch_epoch") is not None})
    if set(drawn) - set(kept_epochs(config)):  # what the keys checked above cannot hold: random-search draws
        raise ConfigError(f"config key 'search.space.branch_epoch' draws {drawn}; allowed values: "
                          f"{', '.join(map(str, kept_epochs(config)))} (use distribution: choice)")
    if not runs:
        raise ConfigError("config keys 'grid', 'runs' and 'search.n' describe no fine-tune; allowed: at least one grid axis value, run or draw")
    return config


def pipeline_seed(config: dict[str, Any], own: int | None) -> int:
    """The seed a part of the pipeline (the init's weights, pretraining, one fine-tune) actually uses under the
    experiment's top-level ``seed``: its own seed when ``seed`` is 0, a different stream for every other value.
    So ``seed: 1`` re-seeds the whole pipeline (splits, init, fine-tunes) while run ids, which hash only a run's
    own hyperparameters, stay the same."""
    return int(own or 0) + 1_000_003 * int(config["seed"])


def soup_specs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Soup entries keyed by their output name."""
    return {soup.get("name", soup["recipe"]): dict(soup) for soup in config["soups"]}
