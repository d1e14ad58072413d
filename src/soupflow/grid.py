"""From the config's ``grid``, ``runs`` and ``search`` to fine-tune configurations with stable ids.

A run id is a hash of the run's resolved hyperparameters, never of its position: inserting a value in the
middle of a grid axis, or growing a random search, leaves every existing run id (and checkpoint) alone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import zlib
from typing import Any

import numpy as np

FLOAT_KEYS = {"lr", "weight_decay", "label_smoothing", "momentum", "warmup_fraction"}
INT_KEYS = {"epochs", "batch_size", "seed", "branch_epoch"}


def normalise(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Give each value its canonical type (1 and 1.0 are the same learning rate)."""
    out = {}
    for key, value in hyperparameters.items():
        if value is not None and key in FLOAT_KEYS:
            value = float(value)
        elif value is not None and key in INT_KEYS:
            value = int(value)
        out[key] = value
    return out


def run_id(hyperparameters: dict[str, Any]) -> str:
    """Stable id of a fine-tune: a hash of its hyperparameters (None values left out, keys sorted)."""
    canonical = {k: v for k, v in normalise(hyperparameters).items() if v is not None}
    digest = hashlib.sha1(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return f"run-{digest[:10]}"


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Cartesian product of the grid's axes, one dict per point."""
    if not grid:
        return []
    axes = list(grid)
    return [dict(zip(axes, values)) for values in itertools.product(*(grid[a] for a in axes))]


def _draw(spec: dict[str, Any], rng: np.random.Generator) -> Any:
    kind = spec["distribution"]
    if kind == "log_uniform":
        return float(math.exp(rng.uniform(math.log(spec["low"]), math.log(spec["high"]))))
    if kind == "uniform":
        return float(rng.uniform(spec["low"], spec["high"]))
    if kind == "int_uniform":
        return int(rng.integers(int(spec["low"]), int(spec["high"]) + 1))
    values = spec["values"]
    return values[int(rng.integers(len(values)))]


def search_points(search: dict[str, Any]) -> list[dict[str, Any]]:
    """Random-search draws. Draw i of dimension d is seeded by (seed, i, d) alone, so it never changes
    when ``n`` grows or another dimension is added."""
    points = []
    for index in range(search.get("n", 0)):
        point = {}
        for name, spec in search.get("space", {}).items():
            rng = np.random.default_rng([search.get("seed", 0), index, zlib.crc32(name.encode())])
            point[name] = _draw(spec, rng)
        points.append(point)
    return points


def expand_runs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """All fine-tunes of an experiment: ``{run_id: resolved hyperparameters}``, duplicates merged.

    Linear in the number of runs; this is evaluated on every DAG build.
    """
    defaults = config["finetune"]
    overrides = grid_points(config.get("grid", {})) + list(config.get("runs", [])) + search_points(config.get("search", {}))
    runs: dict[str, dict[str, Any]] = {}
    for override in overrides:
        hyperparameters = normalise({**defaults, **override})
        runs.setdefault(run_id(hyperparameters), hyperparameters)
    return runs
