"""The soup job's memory across reruns: each soup's files kept under the hash of everything they depend on.

Snakemake reruns the one soup job of a pipeline when any soup entry changes, and deletes its outputs first.
The job then restores every soup whose entry, ingredients (the runs table), init, base soup and code are those
of an earlier job from hard links kept in ``cache`` (no copy), and cooks only the others. Keys read file
headers and the runs table's bytes, never the weights: cheap however large the models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from soupflow.plan.catalog import soup_options
from soupflow.plan.versions import SOUPS as SOUP_CODE
from soupflow.store.io import file_digest, recorded_digest

#: the files of a soup (``jobs.soup.SoupPaths``) that are kept and restored
KEPT = ("model", "metrics", "trace", "outputs")


def soup_key(config: dict[str, Any], entry: dict[str, Any], paths, base_key: str | None) -> str:
    """What a soup's files depend on, hashed: its options, the model, the runs table (every ingredient's
    metrics and files), the init it may start from, the key of the soup it may interpolate toward, the code."""
    digest = hashlib.sha256(json.dumps([SOUP_CODE, soup_options(entry), config["model"]], sort_keys=True,
                                       default=str).encode())
    digest.update(file_digest(paths.runs).encode())
    for part in (recorded_digest(paths.init) if paths.init else "", base_key or ""):
        digest.update(part.encode())
    return digest.hexdigest()[:32]


def restore(cache: str, key: str, paths) -> bool:
    """Link a kept soup's files into place; False when none is kept under ``key``."""
    kept = Path(cache) / key
    if not all((kept / Path(getattr(paths, name)).name).exists() for name in KEPT):
        return False
    for name in KEPT:
        target = Path(getattr(paths, name))
        target.parent.mkdir(parents=True, exist_ok=True)
        _link(kept / target.name, target)
    return True


def keep(cache: str, key: str, paths) -> None:
    """Keep a soup's freshly written files under ``key`` (hard links: no copy)."""
    kept = Path(cache) / key
    kept.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        source = Path(getattr(paths, name))
        _link(source, kept / source.name)


def forget_others(cache: str, keys: set[str]) -> None:
    """Drop kept soups no entry of this job uses any more (the cache holds one job's soups, not a history)."""
    for folder in Path(cache).iterdir() if Path(cache).is_dir() else []:
        if folder.name not in keys:
            shutil.rmtree(folder, ignore_errors=True)


def _link(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` atomically (a copy where links are not allowed)."""
    tmp = target.with_name(f".{target.name}.link")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
