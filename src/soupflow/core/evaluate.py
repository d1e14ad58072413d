"""Evaluation of state dicts on one split, with exact early rejection for the soups' selection passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from soupflow.core.models import Folded, channels_last, channels_last_input
from soupflow.store.prepared import PreparedData

#: the most images ``evaluation.batch_size: auto`` puts in a batch: the former default (sized for 28 px images),
#: which auto keeps for them, so the default's scores do not change
AUTO_BATCH_LIMIT = 1000
#: activation memory ``auto`` counts per input value (channels x height x width) of a scoring pass: peak RSS of a
#: folded, channels_last inference pass on CPU measured ~70 B for EfficientNet-Lite0 at 224 px, 43 B for
#: resnet18, 26-73 B for resnet10t (issue 33), plus the uint8 batches the loader holds ahead
ACTIVATION_BYTES = 96


def scoring_batch_size(evaluation: dict[str, Any], image_shape: tuple[int, ...]) -> int:
    """Images per scoring batch: ``evaluation.batch_size`` when it is a number; for ``auto``, as many images of
    ``image_shape`` (channels, height, width) as ``ACTIVATION_BYTES`` per input value fit in
    ``evaluation.memory_mb``, at most ``AUTO_BATCH_LIMIT``. With the default 1,024 MB: 1,000 images up to ~60 px
    RGB (28 px grey: 1,000, as before), 74 at 224 px RGB, so a job's memory follows its images' size."""
    size = evaluation["batch_size"]
    if size != "auto":
        return int(size)
    per_image = ACTIVATION_BYTES * max(1, int(torch.Size(image_shape).numel()))
    return max(1, min(AUTO_BATCH_LIMIT, int(evaluation["memory_mb"]) * 2**20 // per_image))


@dataclass(frozen=True)
class Scores:
    loss: float
    accuracy: float

    def value(self, metric: str) -> float:
        """The selection score to maximise: accuracy, or the negated loss."""
        return self.accuracy if metric == "accuracy" else -self.loss


@dataclass(frozen=True)
class Partial:
    """A selection pass that stopped: its counts so far, from which a later pass can go on."""

    correct: int
    loss_sum: float
    seen: int


@dataclass(frozen=True)
class Bar:
    """What a candidate's val score must reach to be accepted: ``>= value`` (``strict``: ``> value``), with
    ``value`` a :meth:`Scores.value` of the same streamed val pass. Lets a pass stop once it cannot."""

    metric: str
    value: float
    strict: bool = False

    def implies(self, other: "Bar") -> bool:
        """A score that misses ``other`` misses this bar too (same metric, this one at least as high)."""
        return self.metric == other.metric and (
            self.value > other.value or (self.value == other.value and (self.strict or not other.strict)))

    def out_of_reach(self, correct: int, loss_sum: float, seen: int, n: int) -> bool:
        """Exact: True only when no outcome of the ``n - seen`` images left can reach the bar.

        Accuracy: even if every image left is right, ``correct`` stays below the count the bar needs.
        Loss: the sum of per-image losses (each >= 0, added in float64 in a fixed order) only grows, so once
        ``loss_sum / n`` is past the bar the final mean is too."""
        if self.metric == "accuracy":
            needed = round(self.value * n) + int(self.strict)
            return correct + (n - seen) < needed
        mean_so_far, limit = loss_sum / n, -self.value
        return mean_so_far >= limit if self.strict else mean_so_far > limit


def scores_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> Scores:
    logits, labels = logits.float(), labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = int((logits.argmax(dim=1) == labels).sum()) / labels.numel()  # exact, as Evaluator.select
    return Scores(loss=loss if loss == loss else float("inf"), accuracy=accuracy)


class Evaluator:
    """Scores state dicts of one architecture on one split.

    The split's labels live on ``device``, its images come from the prepared data in batches (tensors held on
    the device for the evaluator's lifetime, or files streamed by DataLoader workers); each call swaps weights.
    """

    def __init__(self, model: torch.nn.Module, data: PreparedData, split: str, device: torch.device,
                 batch_size: int = 1000):
        self.model = channels_last(model.to(device)).eval()
        self._folded: Folded | None = None  # the model with BatchNorm folded in (traced once)
        self._fresh = False  # whether the folded model holds the loaded weights
        self.data, self.split, self.device, self.batch_size = data, split, device, batch_size
        self.labels = data.labels(split).to(device)
        self.order: torch.Tensor | None = None  # the split in select()'s order
        self.images_scored = 0  # images select() has run the model on

    @torch.inference_mode()
    def select(self, state_dict: dict[str, torch.Tensor], bar: Bar | None = None,
               resume: Partial | None = None) -> Scores | Partial:
        """Selection scores of ``state_dict``: one pass over the split in a fixed seeded order of images,
        accuracy from integer counts, loss as a float64 sum of per-image losses. With ``bar``, the pass stops
        as soon as the candidate can no longer reach it and returns its :class:`Partial` counts; ``resume``
        goes on from such counts (the same weights, a lower bar). A pass that is not stopped gives exactly the
        scores of the same pass without a bar, so early rejection never changes a decision."""
        order = self._selection_order()
        self.load(state_dict)
        forward = self._forward()
        n = order.shape[0]
        correct, loss_sum, seen = (resume.correct, resume.loss_sum, resume.seen) if resume else (0, 0.0, 0)
        for images, target in self.data.batches(self.split, order[seen:], self.batch_size, self.device):
            logits = forward(self._input(images)).float()
            correct += int((logits.argmax(dim=1) == target).sum())
            loss_sum += float(F.cross_entropy(logits, target, reduction="none").double().sum())
            self.images_scored += target.shape[0]
            seen += target.shape[0]
            if bar is not None and seen < n and bar.out_of_reach(correct, loss_sum, seen, n):
                return Partial(correct, loss_sum, seen)
        loss = loss_sum / n
        return Scores(loss=loss if loss == loss else float("inf"), accuracy=correct / n)

    def _selection_order(self) -> torch.Tensor:
        """The order select() walks the split in: hardest first when :meth:`order_hardest_first` was given the
        ingredients' logits, else shuffled once with a fixed seed (any prefix a fair sample)."""
        if self.order is None:
            self.order = torch.randperm(self.labels.shape[0], generator=torch.Generator().manual_seed(0))
        return self.order

    def order_hardest_first(self, logits: list[torch.Tensor]) -> None:
        """Walk the split from the images most of the ``logits`` (the candidates' own cached outputs on it) get
        wrong to those all get right, least confident first. A candidate's errors then come early, so a pass
        that cannot reach its bar stops early; any fixed order keeps decisions exact."""
        if not logits:
            return
        labels = self.labels.cpu()
        wrong = torch.zeros(labels.shape[0])
        confidence = torch.zeros(labels.shape[0])
        for output in logits:
            wrong += (output.argmax(dim=1) != labels).float()
            confidence += output.float().softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
        # (-wrong, confidence, index) in lexicographic order: stable sorts, the last key first
        order = torch.argsort(confidence, stable=True)
        self.order = order[torch.argsort(-wrong[order], stable=True)]

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        """The model's input for a uint8 batch: normalised, in its layout."""
        return channels_last_input(self.data.normalise(images))

    def load(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)
        self._fresh = False

    def _forward(self) -> torch.nn.Module:
        """The model as scored: the loaded weights in eval mode with each BatchNorm folded into its convolution
        (``models.Folded``: about half the time of a pass on CPU), traced on the first pass and refolded per
        loaded state; a pass without a state (the model's own current weights) refolds them."""
        self.model.eval()
        if self._folded is None:
            self._folded = Folded(self.model)
        if not self._fresh:
            self._folded.refresh()
            self._fresh = True
        return self._folded.module

    @torch.inference_mode()
    def outputs(self, state_dict: dict[str, torch.Tensor] | None = None,
                features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (and penultimate features when asked) of the whole split, on the CPU."""
        if state_dict is not None:
            self.load(state_dict)
        else:
            self._fresh = False  # the model's weights may have changed since the last pass
        forward = self._forward()
        logits, feats = [], []
        for images, _ in self.data.batches(self.split, None, self.batch_size, self.device):
            inputs = self._input(images)
            if features:
                pre = self.model.forward_head(self.model.forward_features(inputs), pre_logits=True)
                feats.append(pre.float().cpu())
                logits.append(self.model.get_classifier()(pre).float().cpu())
            else:
                logits.append(forward(inputs).float().cpu())
        return torch.cat(logits), (torch.cat(feats) if features else None)

    def logits(self, state_dict: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.outputs(state_dict)[0]

    def scores(self, state_dict: dict[str, torch.Tensor] | None = None) -> Scores:
        return scores_from_logits(self.logits(state_dict), self.labels)
