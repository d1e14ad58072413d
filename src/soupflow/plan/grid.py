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

from soupflow.plan.catalog import HYPERPARAMETER_KINDS
from soupflow.plan.pcg64 import Generator


def normalise(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Give each number its canonical type (1 and 1.0 are the same learning rate)."""
    out = {}
    for key, value in hyperparameters.items():
        kind = HYPERPARAMETER_KINDS.get(key)
        out[key] = kind(value) if value is not None and kind in (float, int) else value
    return out


#: every run id matches this (the rules' wildcard constraint)
RUN_ID_PATTERN = "run-[0-9a-f]{10}"


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


def _draw(spec: dict[str, Any], rng: Generator) -> Any:
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
            rng = Generator([search.get("seed", 0), index, zlib.crc32(name.encode())])  # = numpy's default_rng
            point[name] = _draw(spec, rng)
        points.append(point)
    return points


def apply_perturbation(hyperparameters: dict[str, Any], perturbations: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Scale lr, momentum and weight decay by the run's named perturbation (Too Salty's optimizer noise).

    The run keeps the perturbation's name and the scaled values, so its id is that of what it trains with."""
    name = hyperparameters.get("perturbation")
    if name is None:
        return hyperparameters
    scaled = dict(hyperparameters)
    for key, factor in perturbations[name].items():
        scaled[key] = float(hyperparameters[key]) * float(factor)
    if not 0 <= scaled["momentum"] < 1:
        raise ValueError(f"config key 'perturbations.{name}.momentum' scales momentum {hyperparameters['momentum']} "
                         f"to {scaled['momentum']:.4f}; allowed: a result in [0, 1)")
    return scaled


def _add(runs: dict[str, dict[str, Any]], defaults: dict[str, Any], override: dict[str, Any],
         perturbations: dict[str, dict[str, float]]) -> None:
    hyperparameters = normalise(apply_perturbation({**defaults, **override}, perturbations))
    runs.setdefault(run_id(hyperparameters), hyperparameters)


def expand_analysis_runs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The analysis' own fine-tunes: from each ``analysis.branching.epochs`` checkpoint of the pretraining,
    one run per ``analysis.branching.perturbations`` entry (Too Salty's branching design)."""
    branching = config.get("analysis", {}).get("branching", {})
    runs: dict[str, dict[str, Any]] = {}
    for epoch in branching.get("epochs", []):
        for name in branching.get("perturbations") or [None]:
            _add(runs, config["finetune"], {"branch_epoch": epoch, "perturbation": name}, config.get("perturbations", {}))
    return runs


def expand_runs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """All fine-tunes of an experiment: ``{run_id: resolved hyperparameters}``, duplicates merged.

    Linear in the number of runs; this is evaluated on every DAG build.
    """
    defaults = config["finetune"]
    overrides = grid_points(config.get("grid", {})) + list(config.get("runs", [])) + search_points(config.get("search", {}))
    runs: dict[str, dict[str, Any]] = {}
    for override in overrides:
        _add(runs, defaults, override, config.get("perturbations", {}))
    return runs


def sample_pairs(run_ids: list[str], limit: int, seed: int) -> list[tuple[str, str]]:
    """All unordered pairs of ``run_ids`` when there are at most ``limit``, else a seeded sample of ``limit``
    pairs (drawn without enumerating all of them, so it stays cheap for thousands of runs)."""
    ids = sorted(run_ids)
    n = len(ids)
    total = n * (n - 1) // 2
    if total <= limit:
        return list(itertools.combinations(ids, 2))
    rng = Generator(seed)  # = numpy's default_rng(seed)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < limit:
        i, j = rng.integers(n), rng.integers(n)
        if i != j:
            chosen.add((min(i, j), max(i, j)))
    return [(ids[i], ids[j]) for i, j in sorted(chosen)]
