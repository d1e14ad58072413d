"""BatchNorm statistics re-estimated for an averaged model (a soup option: ``bn: recompute``).

Averaging the running means and variances of several runs does not give the statistics of the averaged
weights: each layer's input distribution under the soup's weights is a different one. With BatchNorm models
whose runs drift apart this alone can collapse a soup (the pruned-soup paper's ResNets and EfficientNets).
Re-estimating every BatchNorm layer's running mean and variance with one forward pass in training mode over
a seeded sample of *train* images (never val or test: selection and reporting must not see them) is what
``torch.optim.swa_utils.update_bn`` does for SWA; soupflow calls it.

Cost: one forward pass over the sample (``bn_images``, 2,000 by default) per scored state, i.e. per greedy or
pruned candidate, on top of the validation pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import update_bn

from soupflow.core.average import StateDict
from soupflow.core.evaluate import scoring_batch_size
from soupflow.core.models import channels_last, channels_last_input
from soupflow.store.prepared import PreparedData

#: The split BatchNorm statistics are estimated on: fine-tuning data, never val (selection) or test (reporting).
SPLIT = "train"
#: images per forward pass of the re-estimation (``update_bn`` averages the statistics of its batches)
BATCH = 500


def batch_size(evaluation: dict[str, Any], image_shape: tuple[int, ...]) -> int:
    """Images per re-estimation batch: ``BATCH``, or fewer when ``evaluation.batch_size: auto`` scores in
    smaller batches (large images: ``evaluate.scoring_batch_size``), so that re-estimation stays within
    ``evaluation.memory_mb`` too. 28 px images, and an explicit batch_size, keep ``BATCH``: the same statistics."""
    if evaluation["batch_size"] != "auto":
        return BATCH
    return min(BATCH, scoring_batch_size(evaluation, image_shape))


def sample_images(data: PreparedData, count: int, seed: int) -> torch.Tensor:
    """A seeded sample of ``count`` train images (uint8, as evaluated), the same for every state it serves:
    held in memory, so its size is ``count``'s, not the data set's."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(data.labels(SPLIT).shape[0], generator=generator)[:count]
    return data.images(SPLIT, index.sort().values)


class BatchNormRefresher:
    """Turns a state dict into the same weights with BatchNorm statistics re-estimated on a train sample.

    ``refresh(state)`` returns a new state dict (CPU tensors); the last result is remembered, so scoring the
    same state on val and then on test costs one re-estimation.
    """

    def __init__(self, model: torch.nn.Module, data: PreparedData, device: torch.device, count: int = 2000,
                 seed: int = 0, batch_size: int = BATCH):
        self.model = channels_last(model.to(device))
        self.data, self.device, self.batch_size = data, device, batch_size
        self.images = sample_images(data, count, seed).to(device)
        self._last: tuple[StateDict, StateDict] | None = None  # (input, result); holding the input keeps `is` sound

    def batches(self):
        for start in range(0, self.images.shape[0], self.batch_size):
            yield channels_last_input(self.data.normalise(self.images[start:start + self.batch_size]))

    @torch.no_grad()
    def refresh(self, state: StateDict) -> StateDict:
        if self._last is not None and self._last[0] is state:
            return self._last[1]
        self.model.load_state_dict(state)
        update_bn(self.batches(), self.model)  # resets the statistics, then a cumulative average over batches
        fresh = {name: tensor.detach().to("cpu", copy=True) for name, tensor in self.model.state_dict().items()}
        self._last = (state, fresh)
        return fresh
