"""The learned soup (Wortsman et al., the model-soups authors' ``learned`` soup): mixing weights per layer,
a softmax over the ingredients, fitted by gradient descent on the validation split through
``torch.func.functional_call`` — the ingredients' weights stay fixed, only the mixing logits learn.

Every floating tensor of a group (a module: a conv's weight, a BatchNorm layer's scale, shift and running
statistics) is mixed with that group's weights, so the soup is a convex combination per layer. The model runs
in eval mode while fitting: BatchNorm uses the mixed running statistics, as the saved soup will.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from soupflow.core.average import StateDict
from soupflow.core.models import channels_last_input
from soupflow.plan.catalog import RECIPES, SOUP_OPTIONS
from soupflow.store.prepared import PreparedData

LEARNED = RECIPES["learned"].defaults  # the learned recipe's option defaults


@dataclass(frozen=True)
class Fit:
    """How to fit the mixing weights (the ``learned`` recipe's options)."""

    epochs: int = LEARNED["epochs"]
    lr: float = LEARNED["lr"]
    batch_size: int = LEARNED["batch_size"]
    seed: int = SOUP_OPTIONS["seed"]
    granularity: str = LEARNED["granularity"]  # one set of weights per module, or per tensor


def group_of(name: str, granularity: str) -> str:
    """The mixing group of a state-dict key: its module (``layer1.0.bn1``) or the tensor itself."""
    return name.rsplit(".", 1)[0] if granularity == "module" and "." in name else name


def state_megabytes(state: StateDict) -> float:
    return sum(t.numel() * t.element_size() for t in state.values()) / 2**20


def mix(stacked: StateDict, weights: torch.Tensor, index: dict[str, int], fixed: StateDict,
        buffers: frozenset[str] = frozenset()) -> StateDict:
    """Σᵢ wᵢ θᵢ per tensor, with the weights of the tensor's group; integer buffers taken as they are.
    ``buffers`` (BatchNorm running statistics) are mixed with the same weights but carry no gradient: torch's
    batch_norm does not differentiate through them."""
    out = {name: torch.tensordot(weights[index[name]].detach() if name in buffers else weights[index[name]],
                                 tensors, dims=1) for name, tensors in stacked.items()}
    return out | fixed


def fit_mixture(model: torch.nn.Module, states: list[StateDict], data: PreparedData, split: str,
                device: torch.device, fit: Fit) -> tuple[StateDict, list[dict]]:
    """Fit per-group softmax weights over ``states`` to minimise cross-entropy on a split of ``data`` (the
    validation split); returns the mixed state (each tensor in its dtype) and the mean loss of every epoch."""
    n = data.labels(split).shape[0]
    floating = [name for name, tensor in states[0].items() if tensor.is_floating_point()]
    stacked = {name: torch.stack([s[name].to(device, torch.float32) for s in states]) for name in floating}
    fixed = {name: tensor.to(device) for name, tensor in states[0].items() if not tensor.is_floating_point()}
    groups = sorted({group_of(name, fit.granularity) for name in floating})
    index = {name: groups.index(group_of(name, fit.granularity)) for name in floating}
    buffers = frozenset(name for name, _ in model.named_buffers())
    logits = torch.zeros(len(groups), len(states), device=device, requires_grad=True)  # uniform soup at start
    optimizer = torch.optim.Adam([logits], lr=fit.lr)
    generator = torch.Generator().manual_seed(fit.seed)
    model.eval()
    history = []
    for epoch in range(fit.epochs):
        order, total, batches = torch.randperm(n, generator=generator), 0.0, 0
        for images, labels in data.batches(split, order, fit.batch_size, device):
            state = mix(stacked, torch.softmax(logits, dim=1), index, fixed, buffers)
            outputs = functional_call(model, state, (channels_last_input(data.normalise(images)),))
            loss = F.cross_entropy(outputs.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        history.append({"epoch": epoch + 1, "fit_loss": total / batches})
    with torch.no_grad():
        weights = torch.softmax(logits, dim=1)
        state = mix(stacked, weights, index, fixed)
    dtypes = {name: tensor.dtype for name, tensor in states[0].items()}
    return {name: tensor.detach().to("cpu", dtypes[name]) for name, tensor in state.items()}, history
