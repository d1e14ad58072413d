"""A linear probe of the init's classifier head, before any fine-tune (LP-FT, ``model.linear_probe``).

Weights pretrained elsewhere arrive with a head for other classes, which the init replaces by a seeded random
one. Fine-tuning everything under a random head first distorts the pretrained features while the head is
still useless (Kumar et al., "Fine-Tuning can Distort Pretrained Features"); runs that start from a head
already fitted to the task move less, which is also what keeps them in one basin, where averaging works
(Wortsman et al.'s ingredients start from CLIP's zero-shot head). The probe is multinomial logistic
regression on the frozen model's pre-logit features of the *train* images (never val or test), fitted by
L-BFGS; its L2 strength is chosen on a seeded fifth of those train images held out from the fit, and the head
is then refitted on all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from soupflow.core.models import channels_last, channels_last_input
from soupflow.store.prepared import PreparedData

#: The probe sees fine-tuning images only: val selects soups, test reports them.
SPLIT = "train"
#: The most train images the probe fits on (a seeded sample beyond): their features are held in memory.
MAX_IMAGES = 20000
#: L2 strengths tried, on the mean cross-entropy (weight_decay * ||W||^2 is added to it).
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)
HELD_OUT = 0.2


@dataclass(frozen=True)
class ProbeResult:
    """What the probe chose and how well the fitted head does on the train images it was fitted to."""

    weight_decay: float
    held_out_accuracy: float
    train_accuracy: float
    images: int

    def metadata(self) -> dict[str, str]:
        return {"probe_weight_decay": str(self.weight_decay), "probe_images": str(self.images),
                "probe_held_out_accuracy": f"{self.held_out_accuracy:.4f}",
                "probe_train_accuracy": f"{self.train_accuracy:.4f}"}


@torch.no_grad()
def features(model: torch.nn.Module, data: PreparedData, split: str, device: torch.device,
             order: torch.Tensor | None = None, batch_size: int = 500) -> torch.Tensor:
    """Pre-logit features (timm's ``forward_head(..., pre_logits=True)``) of a split's images (those of
    ``order``, or all), in eval mode."""
    model = channels_last(model.to(device)).eval()
    out = []
    for images, _ in data.batches(split, order, batch_size, device):
        batch = channels_last_input(data.normalise(images))
        out.append(model.forward_head(model.forward_features(batch), pre_logits=True).float().flatten(1))
    return torch.cat(out)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float,
                 max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of multinomial logistic regression on ``x`` (L2 on the weight only), from zeros."""
    weight = torch.zeros(classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def accuracy(x: torch.Tensor, y: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(((x @ head[0].T + head[1]).argmax(dim=1) == y).float().mean())


def linear_probe(model: torch.nn.Module, data: PreparedData, device: torch.device, seed: int) -> ProbeResult:
    """Fit ``model``'s classifier head in place to the train images' frozen features; the rest is untouched."""
    classifier = model.get_classifier()
    if not isinstance(classifier, torch.nn.Linear) or classifier.bias is None:
        raise RuntimeError(f"model.linear_probe needs a linear classifier head with a bias; {type(model).__name__}'s "
                           f"is {classifier}")
    labels = data.labels(SPLIT)
    sample = None if labels.shape[0] <= MAX_IMAGES else torch.randperm(
        labels.shape[0], generator=torch.Generator().manual_seed(seed))[:MAX_IMAGES].sort().values
    x = features(model, data, SPLIT, device, sample)
    y = (labels if sample is None else labels[sample]).to(device)
    order = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(seed)).to(device)
    cut = max(1, round(y.shape[0] * HELD_OUT))
    held, fit = order[:cut], order[cut:]
    scored = {wd: accuracy(x[held], y[held], fit_logistic(x[fit], y[fit], data.num_classes, wd))
              for wd in WEIGHT_DECAYS}
    chosen = max(WEIGHT_DECAYS, key=lambda wd: (scored[wd], wd))  # ties: the stronger regularisation
    head = fit_logistic(x, y, data.num_classes, chosen)
    with torch.no_grad():
        classifier.weight.copy_(head[0].to(classifier.weight))
        classifier.bias.copy_(head[1].to(classifier.bias))
    return ProbeResult(chosen, scored[chosen], accuracy(x, y, head), y.shape[0])
