"""Task vectors τ = θ − θ0 (a fine-tune's weights minus the weights it started from) and the ways the merging
toolkits (mergekit, FusionBench) sparsify and combine them before moving θ0 along the result: TIES' trim and
sign election, DARE's random drop and rescale, Model Breadcrumbs' magnitude band. Plain functions over tensors
and state dicts, applied per tensor as mergekit does; the recipes in ``soupflow.core.recipes`` stream the
ingredients through them and choose the scale λ of ``θ0 + λ·τ`` on val.

Arithmetic is in float64, so that a merged state does not depend on the order the ingredients arrive in beyond
float64 rounding; the merged weights take their tensor's dtype.
"""

from __future__ import annotations

import zlib

import torch

from soupflow.core.average import StateDict


def task_vector(weights: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """θ − θ0 of one tensor, in float64."""
    return weights.to(torch.float64) - start.to(torch.float64)


def magnitude_band(vector: torch.Tensor, density: float, gamma: float = 0.0) -> torch.Tensor:
    """The entries of ``vector`` ranked by decreasing magnitude, past the ``gamma`` largest, the next
    ``density`` of them, as a boolean mask of its shape: TIES' trim (gamma 0: the top ``density``) and
    Model Breadcrumbs' band (the largest outliers and the small noise both left out). Counts round to the
    nearest entry, at least one kept; ties in magnitude go to the earlier entry (a stable sort)."""
    size = vector.numel()
    skip = min(size - 1, round(gamma * size))
    keep = max(1, round(density * size))
    order = torch.argsort(vector.abs().flatten(), descending=True, stable=True)
    mask = torch.zeros(size, dtype=torch.bool)
    mask[order[skip:skip + keep]] = True
    return mask.view(vector.shape)


def dare_generator(seed: int, ingredient: str) -> torch.Generator:
    """DARE's random stream for one ingredient: seeded by the entry's ``seed`` and the ingredient's name, so
    that adding a run to the grid leaves every other run's drop mask as it was."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{ingredient}".encode()))


def dare(vector: torch.Tensor, drop: float, generator: torch.Generator) -> torch.Tensor:
    """DARE (Yu et al. 2024): each entry dropped with probability ``drop``, the kept ones rescaled by
    1 / (1 − drop) so that the vector's expectation is unchanged."""
    kept = torch.rand(vector.shape, generator=generator, dtype=torch.float64) >= drop
    return vector * kept / (1.0 - drop)


class SignElection:
    """TIES' merge (Yadav et al. 2023) of trimmed task vectors, streamed in two passes over the ingredients:
    ``vote`` each, which sums them (the sign of the sum is each entry's elected sign, TIES' "mass"
    election); then ``agree`` each, which keeps the entries whose sign is the elected one. ``merged`` is
    their disjoint mean: per entry, the mean over the ingredients that agree (0 where none does)."""

    def __init__(self) -> None:
        self.votes: StateDict = {}
        self.sums: StateDict = {}
        self.counts: StateDict = {}

    def vote(self, vectors: StateDict) -> None:
        for name, vector in vectors.items():
            self.votes[name] = self.votes[name] + vector if name in self.votes else vector.clone()

    def agree(self, vectors: StateDict) -> None:
        for name, vector in vectors.items():
            agreeing = (torch.sign(vector) == torch.sign(self.votes[name])) & (vector != 0)
            kept = vector * agreeing
            self.sums[name] = self.sums[name] + kept if name in self.sums else kept
            self.counts[name] = self.counts[name] + agreeing if name in self.counts else agreeing.to(torch.int64)

    def merged(self) -> StateDict:
        return {name: total / self.counts[name].clamp(min=1) for name, total in self.sums.items()}


def moved(start: StateDict, merged: StateDict, scale: float, rest: StateDict) -> StateDict:
    """θ0 + λ·τ for every tensor of the merged task vector ``merged`` (in each tensor's dtype); every other
    tensor (BatchNorm statistics, counters: no task direction) taken from ``rest``, e.g. the plain mean."""
    return {name: (start[name].to(torch.float64) + scale * merged[name]).to(tensor.dtype) if name in merged
            else tensor.clone() for name, tensor in rest.items()}
