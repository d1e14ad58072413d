"""Importing pretrained weights into a timm model: match keys, adapt input channels, replace the head, report.

A checkpoint made elsewhere rarely fits the model soupflow builds as it is: its keys follow another naming
(``_conv_stem.weight`` instead of ``conv_stem.weight``), it was trained on 3-channel images, and its head
predicts other classes. ``import_state`` fits it explicitly and never partially:

- keys are matched by name, after an optional ordered list of regex renames (``model.rename``), or, opt-in,
  by position (``model.match: order``) when both sides list the same tensors in the same order;
- the first convolution (``pretrained_cfg['first_conv']``) is adapted to the data's channels with timm's
  ``adapt_input_conv`` (3 -> 1 sums the filters), never re-initialised;
- the classifier (``pretrained_cfg['classifier']``) keeps its fresh, seeded initialisation when its shape
  differs (other classes);
- any other tensor that is missing or of another shape is an error naming ``model.file``.

The ``ImportReport`` says what was loaded, adapted, re-initialised and left unused; it goes to the init log
and into the checkpoint's metadata.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from soupflow.plan.model_file import WeightsError

COUNTER = "num_batches_tracked"  # BatchNorm step counters: not weights, never matched or required


@dataclass
class ImportReport:
    """What happened to every tensor of the model (keys of the model) and of the file (``unused``)."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def names(keys: list[str]) -> str:
            return f" ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else ""

        return (f"loaded {len(self.loaded)} tensors; adapted {len(self.adapted)}{names(self.adapted)}; "
                f"re-initialised {len(self.fresh)}{names(self.fresh)}; unused from the file "
                f"{len(self.unused)}{names(self.unused)}")

    def metadata(self) -> dict[str, str]:
        return {"import_loaded": str(len(self.loaded)), "import_adapted": json.dumps(self.adapted),
                "import_reinitialised": json.dumps(self.fresh), "import_unused": json.dumps(self.unused)}


def weights_only(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, without BatchNorm counters."""
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and not k.endswith(COUNTER)}


def rename_keys(state: dict[str, torch.Tensor], rename: dict[str, str] | None) -> dict[str, torch.Tensor]:
    """Apply each ``pattern: replacement`` (Python regex, in the order given) to every key."""
    if not rename:
        return dict(state)
    out = {}
    for key, value in state.items():
        for pattern, replacement in rename.items():
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def pair_by_order(source: list[str], target: list[str], file: str) -> dict[str, str]:
    """target key -> source key, position by position (``model.match: order``)."""
    if len(source) != len(target):
        raise WeightsError(
            f"model.match: order needs as many tensors in model.file {file!r} ({len(source)}) as in the model "
            f"({len(target)}, BatchNorm counters not counted); use model.rename instead")
    return dict(zip(target, source))


def _prefixes(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def head_keys(model: torch.nn.Module) -> set[str]:
    """Keys of the classifier named by the model's ``pretrained_cfg`` (timm's own convention)."""
    prefixes = _prefixes(getattr(model, "pretrained_cfg", {}).get("classifier"))
    return {k for k in model.state_dict() if any(k.startswith(p + ".") for p in prefixes)}


def first_conv_key(model: torch.nn.Module) -> str | None:
    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    return f"{_prefixes(first)[0]}.weight" if first else None


def adapt_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm's own input-channel adaptation (3 -> 1 sums the filters; more channels repeat and rescale)."""
    from timm.models import adapt_input_conv  # 2.6 s to import timm; not at parse time

    return adapt_input_conv(in_chans, weight)


def import_state(model: torch.nn.Module, state: dict[str, Any], file: str, match: str = "name",
                 rename: dict[str, str] | None = None) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """The model's state dict with the checkpoint's tensors fitted in, and what was done to each.

    Raises ``WeightsError`` when any tensor other than the classifier head is missing or does not fit.
    """
    own = model.state_dict()
    source = rename_keys(weights_only(state), rename)
    targets = [k for k in own if not k.endswith(COUNTER)]
    pairs = pair_by_order(list(source), targets, file) if match == "order" else {t: t for t in targets if t in source}
    head, stem = head_keys(model), first_conv_key(model)
    report, fitted, problems = ImportReport(), dict(own), []
    for key in targets:
        value = source.get(pairs.get(key, ""))
        if value is not None and value.shape == own[key].shape:
            fitted[key] = value.to(own[key].dtype).contiguous()
            report.loaded.append(key)
        elif value is not None and key == stem and value.shape[0] == own[key].shape[0] and value.dim() == 4:
            fitted[key] = adapt_channels(value, own[key].shape[1]).to(own[key].dtype).contiguous()
            report.adapted.append(key)
        elif key in head:
            report.fresh.append(key)
        else:
            problems.append(f"{key} {tuple(own[key].shape)}: " + (
                "not in the file" if value is None else f"file has {pairs[key]} {tuple(value.shape)}"))
    used = {pairs[k] for k in report.loaded + report.adapted}
    report.unused = [k for k in source if k not in used]
    if problems:
        raise WeightsError(
            f"model.file {file!r} does not fit {type(model).__name__}: {len(problems)} of {len(targets)} tensors "
            f"missing or of another shape (first: {problems[0]}); map the file's keys with model.rename "
            f"(regex: replacement) or, when both list the same tensors in the same order, model.match: order")
    return fitted, report
