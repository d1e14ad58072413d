"""The reference table of every config key: its type, default, allowed values, unit and meaning.

Generated from the two sources that already hold these facts — the JSON schema (types, bounds, enums filled in
from the catalog, descriptions) and the defaults (``soupflow.plan.config.DEFAULTS``, the catalog's
hyperparameters and soup options) — so the page cannot drift from what the parser accepts.
``python -m soupflow.plan.keys > docs/keys.md`` writes it; tests/test_docs.py checks the page is current.
Parse time: no torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

from soupflow.plan.catalog import SOUP_OPTIONS, option_holders
from soupflow.plan.config import DEFAULTS, load_schema

#: The unit of a key, by its last name: what a number of it counts (keys not listed are unitless or names).
UNITS: dict[str, str] = {
    "epochs": "epochs", "batch_size": "images", "bn_images": "images", "max_train": "images",
    "max_test": "images", "max_images": "images", "labels_per_class": "images per class", "image_size": "px",
    "lr": "learning rate", "weight_decay": "L2 coefficient", "checkpoint_every_steps": "optimizer steps",
    "devices_per_run": "processes (GPUs)", "workers": "DataLoader processes", "max_memory_mb": "MB",
    "memory_mb": "MB", "pairs": "pairs of runs", "jobs": "jobs", "repeats": "repetitions", "passes": "passes",
    "k": "runs", "max_ingredients": "checkpoints", "keep_every": "epochs", "branch_epoch": "epochs",
    "grad_accum_steps": "micro-batches per step", "clip_grad": "gradient norm", "ema_decay": "per step",
    "warmup_fraction": "share of steps", "val_fraction": "share of images", "test_fraction": "share of images",
    "pretrain_fraction": "share of images", "data_fraction": "share of images", "crop_pct": "share of side",
    "crop_scale": "share of area", "label_smoothing": "probability mass", "random_erase": "probability",
    "drop_path_rate": "probability", "layer_decay": "factor per layer", "severities": "level 1-5",
}


@dataclass(frozen=True)
class KeyRow:
    """One config key as the reference table shows it."""

    key: str
    kind: str
    default: str
    allowed: str
    unit: str
    meaning: str


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` followed (its own keys, e.g. a description, win)."""
    ref = node.get("$ref")
    if not ref:
        return node
    target = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(schema, target), **{k: v for k, v in node.items() if k != "$ref"}}


def _kind(node: dict[str, Any]) -> str:
    kinds = node.get("type")
    if kinds is None and "enum" in node:
        kinds = "string"
    if kinds is None and "oneOf" in node:
        kinds = sorted({str(option.get("type", "string")) for option in node["oneOf"]})
    return " or ".join(map(str, kinds)) if isinstance(kinds, list) else str(kinds or "any")


def _allowed(node: dict[str, Any]) -> str:
    """Enums and bounds, as the error lines state them."""
    if "enum" in node:
        return ", ".join("null" if value is None else str(value) for value in node["enum"])
    bounds = [f"{op} {node[name]}" for name, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                   ("maximum", "<="), ("exclusiveMaximum", "<")) if name in node]
    items = node.get("items")
    if not bounds and isinstance(items, dict) and "enum" in items:
        return "each of " + ", ".join(map(str, items["enum"]))
    return " and ".join(bounds)


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list, bool)):
        return json.dumps(value)
    return str(value)


def _meaning(node: dict[str, Any]) -> str:
    """The description, on one line."""
    return " ".join(str(node.get("description", "")).split())


def _rows(schema: dict[str, Any], node: dict[str, Any], path: str, defaults: Any) -> Iterator[KeyRow]:
    node = _resolve(schema, node)
    properties = node.get("properties")
    if properties and node.get("type") in ("object", ["object", "null"], None):
        for name, child in properties.items():
            child_default = defaults.get(name) if isinstance(defaults, dict) else None
            yield from _rows(schema, child, f"{path}.{name}" if path else name, child_default)
        return
    leaf = path.rsplit(".", 1)[-1].removesuffix("[]")
    yield KeyRow(path, _kind(node), _shown(defaults), _allowed(node), UNITS.get(leaf, ""), _meaning(node))


def _recipe_defaults() -> dict[str, str]:
    """Each recipe-only option's defaults, with the recipes that have each: ``"5 (greedy_random, pruned_random)"``."""
    shown: dict[str, str] = {}
    for name, held in option_holders().items():
        by_value: dict[str, list[str]] = {}
        for recipe, option in held:
            by_value.setdefault(_shown(option.default), []).append(recipe)
        shown[name] = "; ".join(f"{value} ({', '.join(recipes)})" for value, recipes in by_value.items())
    return shown


def key_rows() -> list[KeyRow]:
    """Every key of the config (soups entries as ``soups[].<option>``), in the schema's order."""
    schema = load_schema()
    rows: list[KeyRow] = []
    for name, node in schema["properties"].items():
        if name == "soups":
            rows += _rows(schema, node["items"], "soups[]", {**_recipe_defaults(), **SOUP_OPTIONS})
        elif name == "grid":
            rows.append(KeyRow("grid.<hyperparameter>", "array", "{}", "a list of that hyperparameter's values", "",
                               _meaning(node)))
        else:
            rows += _rows(schema, node, name, DEFAULTS.get(name))
    return rows


def markdown() -> str:
    """The reference page."""
    lines = ["# Every config key", "",
             "Generated from the JSON schema and the defaults (`python -m soupflow.plan.keys > docs/keys.md`); "
             "Every hyperparameter under "
             "`finetune.` is also a grid axis, a `runs:` key and a random-search dimension. A soup option's default "
             "may be a recipe's own ([recipes](recipes.md)).", "",
             "| key | type | default | allowed | unit | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for row in key_rows():
        cells = (f"`{row.key}`", row.kind, f"`{row.default}`", row.allowed, row.unit, row.meaning)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
