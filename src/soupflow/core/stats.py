"""Paired statistics: is a soup's difference to the best individual real, or test-set noise?

Both models are scored on the *same* test images, so the right test is a paired one:

- a **paired bootstrap** resamples test images (the same resample for both models) and takes the 2.5 % and
  97.5 % quantiles of the mean per-image difference: a 95 % interval for the difference in accuracy (in points)
  and in loss;
- **McNemar's exact test** looks only at the images on which the two models disagree (one right, one wrong):
  under "no difference" each such image is a fair coin, so the two-sided binomial tail of the smaller count is
  the p-value of the accuracy difference.

A difference "wins" when its interval excludes zero. Differences are always *model − reference*: a positive
accuracy difference and a negative loss difference are improvements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Bootstrap settings used by the workflow: fixed, so every soup of a run is compared on the same resamples.
RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A paired difference (model − reference) with its bootstrap interval."""

    diff: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """A model against a reference on the same test images."""

    accuracy_pt: Interval  # difference in accuracy, in percentage points
    loss: Interval  # difference in mean cross-entropy
    mcnemar_p: float  # exact two-sided p-value of the accuracy difference
    disagreements: int  # images one model gets right and the other wrong

    @property
    def wins(self) -> bool:
        """The model is more accurate than the reference and the interval says it is not noise."""
        return self.accuracy_pt.low > 0

    def columns(self, prefix: str) -> dict[str, float]:
        """Flat numeric columns for a table row: ``{prefix}acc_diff_pt``, ``…_low``, ``…_high`` and so on."""
        out: dict[str, float] = {}
        for name, interval in (("acc_diff_pt", self.accuracy_pt), ("loss_diff", self.loss)):
            for field, value in asdict(interval).items():
                out[f"{prefix}{name}" + ("" if field == "diff" else f"_{field}")] = value
        out[f"{prefix}acc_p_mcnemar"] = self.mcnemar_p
        return out


def format_p(p: float) -> str:
    """'p = 0.003', 'p = 2e-05' or 'p < 1e-16' (below that the exact tail underflows)."""
    if p < 1e-16:
        return "p < 1e-16"
    return f"p = {p:.3f}" if p >= 0.001 else f"p = {p:.0e}"


def per_image(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Correctness (0/1) and cross-entropy of every image, as float64 arrays."""
    logits, labels = logits.float(), labels.to(logits.device)
    correct = (logits.argmax(dim=1) == labels).double().cpu().numpy()
    loss = F.cross_entropy(logits, labels, reduction="none").double().cpu().numpy()
    return correct, loss


def paired_bootstrap(model: np.ndarray, reference: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
                     level: float = LEVEL, clusters: np.ndarray | None = None) -> Interval:
    """Mean of ``model − reference`` over images, with a percentile interval from ``resamples`` resamples of
    the images (with replacement; the same images for both models, which is what makes it paired).

    ``clusters`` (an id per value) resamples groups of values together: the differences of one test image
    under several replicates move together, so a gain that comes from the same images in every replicate is
    not mistaken for independent evidence. Without it every value is its own cluster (the plain bootstrap)."""
    return paired_bootstraps([(model, reference)], resamples, seed, level, clusters)[0]


def paired_bootstraps(pairs: list[tuple[np.ndarray, np.ndarray]], resamples: int = RESAMPLES, seed: int = SEED,
                      level: float = LEVEL, clusters: np.ndarray | None = None, chunk: int = 250) -> list[Interval]:
    """:func:`paired_bootstrap` of several (model, reference) measures of the same images on one set of
    resamples: each interval is the one its own call with this seed gives, for the price of one draw."""
    diffs = np.stack([np.asarray(m, dtype=np.float64) - np.asarray(r, dtype=np.float64) for m, r in pairs])
    if diffs.shape[1] == 0:
        return [Interval(math.nan, math.nan, math.nan) for _ in pairs]
    if clusters is None:
        sums, counts = diffs, None
    else:
        ids = np.unique(np.asarray(clusters), return_inverse=True)[1]
        sums = np.stack([np.bincount(ids, weights=diff) for diff in diffs])
        counts = np.bincount(ids).astype(np.float64)
    n = sums.shape[1]
    rng = np.random.default_rng(seed)
    means = np.empty((len(pairs), resamples))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(0, n, size=(size, n))
        weight = None if counts is None else counts[drawn].sum(axis=1)
        for k, values in enumerate(sums):
            means[k, start:start + size] = values[drawn].mean(axis=1) if weight is None \
                else values[drawn].sum(axis=1) / weight
    tail = (1 - level) / 2
    bounds = np.quantile(means, [tail, 1 - tail], axis=1)
    return [Interval(float(diff.mean()), float(bounds[0, k]), float(bounds[1, k])) for k, diff in enumerate(diffs)]


def mcnemar_exact(model_correct: np.ndarray, reference_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: P(a count as far from b+c over 2 as the smaller one | fair coin)."""
    model_correct, reference_correct = np.asarray(model_correct, bool), np.asarray(reference_correct, bool)
    b = int(np.sum(model_correct & ~reference_correct))
    c = int(np.sum(~model_correct & reference_correct))
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    # log of sum_{i<=k} C(n, i) / 2^n, summed in log space (n reaches the size of the test set)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2 * tail)


def compare(logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor,
            resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    """A model's test logits against the reference's (the best individual's) on the same labelled images."""
    return pooled_compare([(logits, reference_logits, labels)], resamples=resamples, seed=seed)


def pooled_compare(replicates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], images: list[list] | None = None,
                   resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    """(model logits, reference logits, labels) of several replicates — the whole pipeline under several seeds —
    pooled: the mean difference over every (replicate, test image), its interval from a paired bootstrap that
    resamples test images, each with its differences in every replicate that tests it (``images``: each
    replicate's image keys, e.g. ``store.prepared.test_rows``; None: no image is shared), and McNemar over every
    discordant (replicate, image). The interval says whether the mean gain over these replicates is larger than
    test-set noise; how far replicates disagree is read from each one's own interval. One replicate is the
    plain comparison."""
    scored = [(per_image(model, labels), per_image(reference, labels)) for model, reference, labels in replicates]
    clusters = None
    if images is not None and len(replicates) > 1:
        ids: dict = {}
        clusters = np.array([ids.setdefault(key, len(ids)) for keys in images for key in map(tuple, keys)])
    correct, ref_correct = (np.concatenate([m[0] for m, _ in scored]), np.concatenate([r[0] for _, r in scored]))
    loss, ref_loss = np.concatenate([m[1] for m, _ in scored]), np.concatenate([r[1] for _, r in scored])
    # one set of resamples for accuracy and loss (same seed): the two intervals describe the same draws
    accuracy, loss_interval = paired_bootstraps([(100 * correct, 100 * ref_correct), (loss, ref_loss)], resamples,
                                                seed, clusters=clusters)
    right, ref_right = correct.astype(bool), ref_correct.astype(bool)
    return Comparison(accuracy, loss_interval, mcnemar_exact(right, ref_right), int(np.sum(right != ref_right)))
