"""Evaluation of state dicts on one split, with the split's tensors loaded once per job."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from soupflow.data import PreparedData
from soupflow.models import channels_last, channels_last_input


@dataclass(frozen=True)
class Scores:
    loss: float
    accuracy: float

    def value(self, metric: str) -> float:
        """The selection score to maximise: accuracy, or the negated loss."""
        return self.accuracy if metric == "accuracy" else -self.loss


def scores_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> Scores:
    logits, labels = logits.float(), labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return Scores(loss=loss if loss == loss else float("inf"), accuracy=accuracy)


class Evaluator:
    """Scores state dicts of one architecture on one split.

    The split lives on ``device`` for the evaluator's lifetime; each call only swaps the weights.
    """

    def __init__(self, model: torch.nn.Module, data: PreparedData, split: str, device: torch.device,
                 batch_size: int = 1000):
        self.model = channels_last(model.to(device)).eval()
        self.data, self.split, self.device, self.batch_size = data, split, device, batch_size
        self.images, self.labels = data.split(split, device)

    def load(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)

    @torch.inference_mode()
    def outputs(self, state_dict: dict[str, torch.Tensor] | None = None,
                features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (and penultimate features when asked) of the whole split, on the CPU."""
        if state_dict is not None:
            self.load(state_dict)
        logits, feats = [], []
        for start in range(0, self.labels.shape[0], self.batch_size):
            inputs = channels_last_input(self.data.normalise(self.images[start:start + self.batch_size]))
            if features:
                pre = self.model.forward_head(self.model.forward_features(inputs), pre_logits=True)
                feats.append(pre.float().cpu())
                logits.append(self.model.get_classifier()(pre).float().cpu())
            else:
                logits.append(self.model(inputs).float().cpu())
        return torch.cat(logits), (torch.cat(feats) if features else None)

    def logits(self, state_dict: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.outputs(state_dict)[0]

    def scores(self, state_dict: dict[str, torch.Tensor] | None = None) -> Scores:
        return scores_from_logits(self.logits(state_dict), self.labels)
