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
from typing import Any, Callable

from soupflow.plan.errors import ConfigError
from soupflow.plan.model_file import checkpoint_kind, safetensors_shapes


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
    _raise_unless_ok(cached_verdict("kwargs", [version, model["name"], model["kwargs"]],
                                    lambda: _kwargs_verdict(model)))


def _kwargs_verdict(model: dict[str, Any]) -> str:
    import timm  # here: only for kwargs not checked before (2.6 s)

    try:
        timm.create_model(model["name"], pretrained=False, **model["kwargs"])
        return "ok"
    except Exception as error:  # a model rejects an argument in many ways (TypeError, AssertionError, ...)
        return (f"config key 'model.kwargs' is {model['kwargs']}, which timm's {model['name']!r} does not take "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); allowed: its "
                "create_model arguments")


def cached_verdict(kind: str, identity: list[Any], compute: Callable[[], str]) -> str:
    """``compute()``'s verdict ("ok" or an error text) on what ``identity`` names (a timm version, a model, a
    file's size and time...), cached under ~/.cache/soupflow: a check that needs timm runs once, not on every
    parse. Written atomically; an unwritable cache only costs the check again."""
    key = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    verdict = _cache_folder() / f"{kind}-{key}.txt"
    with contextlib.suppress(OSError):
        text = verdict.read_text()
        if text:
            return text
    text = compute()
    with contextlib.suppress(OSError):
        verdict.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=verdict.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, verdict)
    return text


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


def checkpoint_fit(model: dict[str, Any], channels: int, classes: int | None, path: str) -> str:
    """"ok", or what differs between a checkpoint file's tensors and those of ``model`` built for ``channels``
    and ``classes`` (None: unknown yet; the classifier's rows are then not compared): names, then shapes.
    Imports timm and torch: call it through ``cached_verdict``."""
    expected, classifier = _model_shapes(model, channels, classes or 2)
    found = _file_shapes(path)
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        return (f"{len(missing)} of its tensors missing ({', '.join(missing[:3])}), {len(unexpected)} unexpected "
                f"({', '.join(unexpected[:3])})")
    for name, shape in expected.items():
        head = classes is None and name.startswith(classifier)  # the data's classes are not known yet
        if found[name] != shape and not (head and found[name][1:] == shape[1:]):
            return f"{name} is {found[name]}, the model's {shape}"
    return "ok"


def _model_shapes(model: dict[str, Any], channels: int, classes: int) -> tuple[dict[str, list[int]], tuple[str, ...]]:
    """The model's tensor shapes (built on the meta device: no memory, no weights) and its classifier's names."""
    import timm  # here: only for files not checked before
    import torch

    with torch.device("meta"):
        net = timm.create_model(model["name"], pretrained=False, num_classes=classes, in_chans=channels,
                                **model["kwargs"])
    classifier = net.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return {name: list(tensor.shape) for name, tensor in net.state_dict().items()}, tuple(f"{c}." for c in classifier)


def _file_shapes(path: str) -> dict[str, list[int]]:
    """A checkpoint's tensor shapes: from a safetensors header (no tensor read), or a torch file's state dict."""
    if checkpoint_kind(path) == "safetensors":
        return safetensors_shapes(path)
    import torch

    state = torch.load(path, map_location="meta", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {name: list(tensor.shape) for name, tensor in state.items() if hasattr(tensor, "shape")}
