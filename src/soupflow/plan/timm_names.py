"""timm's architecture and optimiser names at parse time, without importing timm in every Snakemake process."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
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

    def listed() -> list[str]:
        import timm  # here: the Snakefile parses without timm (a bare Snakemake plans the workflow); 2.6 s

        return timm.list_models()
    return _cached_names("models", listed)


def known_timm_optimizers() -> frozenset[str] | None:
    """timm's optimiser names (``timm.optim.list_optimizers()``), cached per timm version as the models are."""

    def listed() -> list[str]:
        import timm.optim  # here, as in known_timm_models

        return timm.optim.list_optimizers()
    return _cached_names("optimizers", listed)


def check_optimizer_names(written: list[tuple[str, str]]) -> None:
    """Each (config key, optimiser name) must be a name timm's ``create_optimizer_v2`` builds: one of
    ``timm.optim.list_optimizers()``, or ``lookahead_`` and one of them. Without timm the first job checks it."""
    known = known_timm_optimizers()
    if known is None:
        print("soupflow: timm is not installed beside Snakemake; the first job checks the optimizer names",
              file=sys.stderr)
        return
    for key, name in written:
        base = name.lower().removeprefix("lookahead_")
        if base not in known:
            close = sorted(known_name for known_name in known if known_name[:3] == base[:3])[:8]
            hint = f"similar names: {', '.join(close)}; " if close else ""
            raise ConfigError(f"config key '{key}' is {name!r}, which timm does not know; allowed: {hint}any name of "
                              "timm.optim.list_optimizers(), or lookahead_<name>")


def _cached_names(what: str, listed) -> frozenset[str] | None:
    """The names ``listed()`` returns, asked of timm once per timm version and kept in
    ``~/.cache/soupflow/timm-<version>-<what>.txt``; None where timm is not installed."""
    try:
        version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None
    cache = _cache_folder() / f"timm-{version}-{what}.txt"
    with contextlib.suppress(OSError):
        names = cache.read_text().split()
        if names:
            return frozenset(names)
    names = listed()
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(names))
        os.replace(tmp, cache)
    return frozenset(names)


def _cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "soupflow"


def check_model_kwargs(model: dict[str, Any]) -> None:
    """``model.kwargs`` must be arguments timm's ``model.name`` takes: the model is built once (without weights)
    and the verdict cached per timm version, name and kwargs, so later parses cost nothing. Where timm is not
    installed the first job checks it, as it checks ``model.name``."""
    if not model.get("kwargs") or model["name"].startswith(("hf-hub:", "hf_hub:")):
        return
    try:
        version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return
    key = hashlib.sha1(json.dumps([version, model["name"], model["kwargs"]], sort_keys=True).encode()).hexdigest()
    verdict = _cache_folder() / f"kwargs-{key}.txt"
    with contextlib.suppress(OSError):
        text = verdict.read_text()
        if text:
            _raise_unless_ok(text)
            return
    import timm  # here: only for kwargs not checked before (2.6 s)

    try:
        timm.create_model(model["name"], pretrained=False, **model["kwargs"])
        text = "ok"
    except Exception as error:  # a model rejects an argument in many ways (TypeError, AssertionError, ...)
        text = (f"config key 'model.kwargs' is {model['kwargs']}, which timm's {model['name']!r} does not take "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); allowed: its "
                "create_model arguments")
    with contextlib.suppress(OSError):
        verdict.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=verdict.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, verdict)
    _raise_unless_ok(text)


def _raise_unless_ok(text: str) -> None:
    if text != "ok":
        raise ConfigError(text)


def check_pretrained_name(model: dict[str, Any]) -> None:
    """``model.init: timm`` without ``model.file`` needs a ``model.name`` timm has pretrained weights of: a name
    of ``timm.list_pretrained()`` (``resnet18.a1_in1k``: the tag names the weights), or an architecture that has
    some (timm then picks its default tag). Cached per timm version as the architectures are."""
    if model["init"] != "timm" or model["file"] or model["name"].startswith(("hf-hub:", "hf_hub:")):
        return

    def listed() -> list[str]:
        import timm  # here, as in known_timm_models

        return timm.list_pretrained()
    known = _cached_names("pretrained", listed)
    name = model["name"]
    if known is None or name in known or any(known_name.startswith(f"{name}.") for known_name in known):
        return
    arch = name.split(".")[0]
    tags = sorted(known_name for known_name in known if known_name.startswith(f"{arch}."))[:8]
    hint = f"{', '.join(tags)} (timm.list_pretrained('{arch}.*'))" if tags else "a name of timm.list_pretrained()"
    raise ConfigError(f"config key 'model.name' is {name!r}, which timm has no pretrained weights of (model.init: "
                      f"timm); allowed: {hint}, or model.init: pretrain")
