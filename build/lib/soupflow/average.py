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


def weighted_average(states: Iterable[StateDict], weights: Iterable[float]) -> StateDict:
    """Σ wᵢ θᵢ / Σ wᵢ, streamed; used for interpolations such as the pairwise midpoint."""
    total, norm, kept = {}, 0.0, {}
    dtypes = {}
    for state, weight in zip(states, weights):
        norm += weight
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                kept.setdefault(name, tensor.clone())
                continue
            dtypes[name] = tensor.dtype
            scaled = tensor.to(torch.float64) * weight
            total[name] = total[name].add_(scaled) if name in total else scaled
    out = {name: (value / norm).to(dtypes[name]) for name, value in total.items()}
    out.update(kept)
    return out
