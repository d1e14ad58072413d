"""timm's architecture names at parse time, without importing timm in every Snakemake process."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from soupflow.plan.errors import ConfigError


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
