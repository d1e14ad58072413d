"""Ingredients from elsewhere (config section ``pool``): checkpoints the workflow did not train (an earlier
sweep, a colleague's runs, released fine-tunes), souped beside the grid's runs or alone.

Each file the section names (a path, a glob, or timm's ``local-dir:<folder>``) is one pool checkpoint with a
readable id (``pool-<its name>``); rule pool_checkpoint scores it like a fine-tune, so the runs table, every
recipe and the paired statistics take it as they take a run. Parse time: no torch here, but for the one
check that needs the model (``check_pool_files``), whose verdict is cached per file like the model's kwargs.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import re
from dataclasses import dataclass
from typing import Any

from soupflow.plan.catalog import DATASETS
from soupflow.plan.errors import ConfigError
from soupflow.plan.layout import LOCAL_DIR_FILES
from soupflow.plan.model_file import checkpoint_kind
from soupflow.plan.timm_names import cached_verdict, checkpoint_fit

POOL_PREFIX = "pool-"
#: what a pool checkpoint's id looks like (the rule's wildcard constraint): the prefix and a file-safe name
POOL_ID_PATTERN = POOL_PREFIX + "[A-Za-z0-9_.-]+"


@dataclass(frozen=True)
class PoolCheckpoint:
    """One outside checkpoint: its id (a runs-table row, a folder under ``pool/``), the weights file and the
    config key that named it (errors cite it)."""

    id: str
    file: str
    key: str


def _weights_file(spec: str, key: str) -> str:
    """The weights file of ``spec``: the file itself, or the one timm's ``local-dir:`` would read."""
    if not spec.startswith("local-dir:"):
        return spec
    folder = spec[len("local-dir:"):]
    found = [os.path.join(folder, name) for name in LOCAL_DIR_FILES if os.path.isfile(os.path.join(folder, name))]
    if not found:
        raise ConfigError(f"config key '{key}' is {spec!r}, a folder without {' or '.join(LOCAL_DIR_FILES)}; "
                          "allowed: a timm local-dir folder, a .safetensors or .pth file, or a glob of them")
    return found[0]


def _files(spec: str, key: str) -> list[str]:
    """What one ``checkpoints`` item names: a glob's matches (sorted), or the one file."""
    if spec.startswith("local-dir:"):
        return [_weights_file(spec, key)]
    if glob.has_magic(spec):
        matches = sorted(path for path in glob.glob(spec) if os.path.isfile(path))
        if not matches:
            raise ConfigError(f"config key '{key}' is {spec!r}, which matches no file; allowed: paths or globs of "
                              ".safetensors / .pth checkpoints, or local-dir:<folder>")
        return matches
    if not os.path.isfile(spec):
        raise ConfigError(f"config key '{key}' is {spec!r}, which is not an existing file; allowed: a .safetensors "
                          "or .pth checkpoint, a glob of them, or local-dir:<folder>")
    return [spec]


def _name_of(path: str) -> str:
    """A checkpoint's readable name: its file's stem, or its folder's name for a local-dir file."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if os.path.basename(path) in LOCAL_DIR_FILES:
        stem = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "checkpoint"


def pool_checkpoints(config: dict[str, Any]) -> dict[str, PoolCheckpoint]:
    """Every outside checkpoint of ``pool.checkpoints``, by id, in the order written (globs sorted); a file
    named twice counts once; two files of one name are an error naming both."""
    pool: dict[str, PoolCheckpoint] = {}
    for index, spec in enumerate(config["pool"]["checkpoints"]):
        key = f"pool.checkpoints[{index}]"
        for path in _files(spec, key):
            checkpoint = PoolCheckpoint(POOL_PREFIX + _name_of(path), path, key)
            other = pool.get(checkpoint.id)
            if other is not None and os.path.abspath(other.file) != os.path.abspath(path):
                raise ConfigError(f"config key '{key}' names {path!r}, whose name {checkpoint.id!r} is also that of "
                                  f"{other.file!r} ({other.key}); allowed: checkpoints with distinct file or folder names")
            pool.setdefault(checkpoint.id, checkpoint)
    return pool


def pool_start(config: dict[str, Any]) -> str | None:
    """The weights file of ``pool.start`` (θ0 of the recipes that need a start), or None."""
    spec = config["pool"]["start"]
    return None if spec is None else _files(spec, "pool.start")[0]


def soup_only(config: dict[str, Any]) -> bool:
    """A workflow with outside checkpoints and no fine-tune of its own (no grid, runs or search draws)."""
    return bool(config["pool"]["checkpoints"]) and not (config["grid"] or config["runs"] or config["search"]["n"])


def check_pool_files(config: dict[str, Any], pool: dict[str, PoolCheckpoint], check_model: bool) -> None:
    """Every pool file (and ``pool.start``) must be a checkpoint whose tensors are those of ``model.name`` with
    ``model.kwargs`` for this data (its channels; its classes where the data set says how many): the error names
    the file's config key and the first tensors that differ. With ``check_model`` (the main Snakemake process)
    the model is built once per file and the verdict cached; without, only the file's kind is checked."""
    files = [(checkpoint.key, checkpoint.file) for checkpoint in pool.values()]
    start = pool_start(config)
    if start is not None:
        files.append(("pool.start", start))
    for key, path in files:
        if checkpoint_kind(path) is None:
            raise ConfigError(f"config key '{key}' names {path!r}, whose first bytes are neither a safetensors "
                              "header nor a torch checkpoint; allowed: .safetensors or torch.save files")
        if check_model and not config["model"]["name"].startswith(("hf-hub:", "hf_hub:")):
            _check_fits(config, key, path)


def _check_fits(config: dict[str, Any], key: str, path: str) -> None:
    model, data = config["model"], DATASETS[config["data"]["name"]]
    try:
        version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return  # a bare Snakemake: the scoring job loads the file into the model, strictly
    stat = os.stat(path)
    identity = [version, model["name"], model["kwargs"], data.channels, data.classes, os.path.abspath(path),
                stat.st_size, stat.st_mtime_ns]
    verdict = cached_verdict("pool", identity, lambda: checkpoint_fit(model, data.channels, data.classes, path))
    if verdict != "ok":
        raise ConfigError(f"config key '{key}' names {path!r}, which does not fit model.name {model['name']!r}: "
                          f"{verdict}; allowed: checkpoints of the configured model for this data")
