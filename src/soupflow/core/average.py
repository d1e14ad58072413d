"""Weight averaging over state dicts, streamed: a running sum, never all ingredients in memory.

Floating tensors are summed in float64, so adding and later removing an ingredient (greedy candidates,
pruned removals) returns the sum to its previous value up to ~1e-16 relative error, whatever the
checkpoint dtype. The mean is cast back to each tensor's original dtype.

Integer tensors (BatchNorm's ``num_batches_tracked``) are counters, not weights: averaging them is
meaningless, so the soup keeps the value of the first ingredient added (the best-ranked one for sorted
recipes). They only matter for BatchNorm with ``momentum=None``; no timm model in soupflow's scope uses it.
"""

from __future__ import annotations

from typing import Iterable

import torch

StateDict = dict[str, torch.Tensor]


class StateSum:
    """A running sum of state dicts with the count of ingredients in it."""

    def __init__(self) -> None:
        self.sums: StateDict = {}
        self.kept: StateDict = {}  # integer tensors, from the first ingredient
        self.dtypes: dict[str, torch.dtype] = {}
        self.count = 0

    def _check_keys(self, state: StateDict) -> None:
        expected = set(self.sums) | set(self.kept)
        if self.count and set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise ValueError(f"ingredient does not match the soup's architecture (missing {missing}, extra {extra})")

    def add(self, state: StateDict) -> "StateSum":
        self._check_keys(state)
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                self.kept.setdefault(name, tensor.clone())
            elif name in self.sums:
                self.sums[name].add_(tensor.to(self.sums[name].device, torch.float64))
            else:
                self.sums[name] = tensor.to(torch.float64, copy=True)
                self.dtypes[name] = tensor.dtype
        self.count += 1
        return self

    def subtract(self, state: StateDict) -> "StateSum":
        if self.count <= 1:
            raise ValueError("cannot remove the last ingredient of a soup")
        self._check_keys(state)
        for name, tensor in state.items():
            if name in self.sums:
                self.sums[name].sub_(tensor.to(self.sums[name].device, torch.float64))
        self.count -= 1
        return self

    def mean(self) -> StateDict:
        """The soup: sum / count per floating tensor, in the ingredients' dtype; counters kept."""
        if not self.count:
            raise ValueError("an empty soup has no weights")
        out = {name: (total / self.count).to(self.dtypes[name]) for name, total in self.sums.items()}
        out.update({name: tensor.clone() for name, tensor in self.kept.items()})
        return out


def average(states: Iterable[StateDict]) -> StateDict:
    """Uniform average of state dicts, consumed one at a time (pass a generator to stream from disk)."""
    total = StateSum()
    for state in states:
        total.add(state)
    return total.mean()


def interpolate(start: StateDict, end: StateDict, alpha: float | dict[str, float]) -> StateDict:
    """``(1 - α)·start + α·end`` per floating tensor (α one number, or one per tensor name: a missing name
    means α = 1); integer counters are taken from ``end``. WiSE-FT's path (α = 0 the start, 1 the end)."""
    out = {}
    for name, tensor in end.items():
        a = alpha.get(name, 1.0) if isinstance(alpha, dict) else alpha
        if tensor.is_floating_point():
            mixed = torch.lerp(start[name].to(torch.float64), tensor.to(torch.float64), float(a))
            out[name] = mixed.to(tensor.dtype)
        else:
            out[name] = tensor.clone()
    return out


class UnitDirections:
    """Per tensor, the running sum of the unit task vectors ``(θi − θ0) / ‖θi − θ0‖`` of k fine-tunes, in one
    pass and constant memory. Their mean pairwise cosine follows from the sum alone:
    Σ_{i≠j} cos(δi, δj) = ‖Σ uᵢ‖² − Σ ‖uᵢ‖², so cos̄ = (‖Σ uᵢ‖² − m) / (m (m − 1)) over the m non-zero vectors."""

    def __init__(self, start: StateDict) -> None:
        self.start = {n: t.to(torch.float64) for n, t in start.items() if t.is_floating_point()}
        self.sums: StateDict = {}
        self.nonzero: dict[str, int] = {}

    def add(self, state: StateDict) -> None:
        for name, origin in self.start.items():
            delta = state[name].to(torch.float64) - origin
            norm = float(delta.norm())
            if norm > 0:
                self.sums[name] = self.sums[name] + delta / norm if name in self.sums else delta / norm
                self.nonzero[name] = self.nonzero.get(name, 0) + 1

    def mean_cosine(self, name: str) -> float:
        """The mean pairwise cosine of tensor ``name``'s task vectors; 1 when fewer than two moved."""
        m = self.nonzero.get(name, 0)
        if m < 2:
            return 1.0
        return (float(self.sums[name].pow(2).sum()) - m) / (m * (m - 1))


def model_stock_ratio(k: int, cosine: float) -> float:
    """Model Stock's interpolation ratio t = k·cos / (1 + (k − 1)·cos) from the average of k fine-tunes toward
    the start (Jang et al. 2024, eq. for k models). cos is clamped to [0, 1]: task vectors that point apart on
    average (cos < 0) would give t < 0, past the start, so such a tensor stays at the start (t = 0)."""
    cosine = min(max(cosine, 0.0), 1.0)
    return k * cosine / (1 + (k - 1) * cosine) if cosine > 0 else 0.0
