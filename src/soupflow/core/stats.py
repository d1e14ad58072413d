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

Pooled over replicates (the whole pipeline under several seeds, :func:`pooled_compare`), the interval is a
**hierarchical bootstrap** over the two sources of variance: seeds (replicates resampled with replacement) and
test images (resampled with replacement, an image carrying its differences in every chosen replicate that tests
it). Next to it come a Student-t interval over the per-replicate differences and a sign test.
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


@dataclass(frozen=True)
class PooledComparison(Comparison):
    """A model against a reference over several replicates: ``accuracy_pt`` and ``loss`` carry the hierarchical
    interval (seeds and test images resampled), the rest says how the replicates agree."""

    images_pt: Interval  # accuracy difference with the test images resampled only (the replicates held fixed)
    seeds_pt: Interval  # mean of the per-replicate differences, Student-t interval over replicates
    replicate_pt: tuple[float, ...]  # each replicate's accuracy difference, in points
    sign_p: float  # one-sided sign test of the replicates above zero

    @property
    def wins(self) -> bool:
        """Above zero beyond test-set noise *and* seed noise: both the hierarchical and the t interval."""
        return self.accuracy_pt.low > 0 and self.seeds_pt.low > 0

    @property
    def loses(self) -> bool:
        return self.accuracy_pt.high < 0 and self.seeds_pt.high < 0

    def columns(self, prefix: str) -> dict[str, float | list[float]]:
        """:meth:`Comparison.columns` and ``images_low``/``_high``, ``t_mean``/``_low``/``_high``,
        ``replicate_diffs`` and ``sign_p`` (accuracy, in points)."""
        return {**super().columns(prefix), f"{prefix}images_low": self.images_pt.low,
                f"{prefix}images_high": self.images_pt.high, f"{prefix}t_mean": self.seeds_pt.diff,
                f"{prefix}t_low": self.seeds_pt.low, f"{prefix}t_high": self.seeds_pt.high,
                f"{prefix}replicate_diffs": list(self.replicate_pt), f"{prefix}sign_p": self.sign_p}


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


def hierarchical_bootstraps(replicates: list[list[np.ndarray]], clusters: list[np.ndarray], resamples: int = RESAMPLES,
                            seed: int = SEED, level: float = LEVEL, chunk: int = 250
                            ) -> list[tuple[Interval, Interval]]:
    """Per measure, the mean difference over every (replicate, image) with two percentile intervals:
    (replicates *and* images resampled, images only).

    ``replicates[r][k]``: replicate r's per-image differences of measure k; ``clusters[r]``: an id per value
    naming its test image, shared across replicates. One resample draws the replicates with replacement (seed
    noise) and, on a generator of its own, the images with replacement, *one draw for all replicates*: crossed,
    not nested, because the replicates test mostly the same images. A replicate drawn twice, or a copy of a
    replicate, then brings no new test-set evidence, and the image stream does not depend on the number of
    replicates, so ``[a, a]`` gives ``[a]``'s interval. (Resampling images apart within each chosen replicate
    would average the shared images' noise away as if the test sets were independent.) Resampling both ways is
    slightly conservative (Owen 2007, "The pigeonhole bootstrap"); with few replicates the seed part is still a
    percentile bootstrap over a handful of values, hence the t interval of :func:`seeds_interval` beside it."""
    keys, flat = np.unique(np.concatenate([np.asarray(c) for c in clusters]), return_inverse=True)
    ids = np.split(flat.ravel(), np.cumsum([len(c) for c in clusters])[:-1])
    n, count, measures = len(keys), len(replicates), len(replicates[0])
    sums = np.stack([np.stack([np.bincount(i, weights=np.asarray(r[k], dtype=np.float64), minlength=n)
                               for r, i in zip(replicates, ids)], axis=1) for k in range(measures)])  # (k, n, R)
    counts = np.stack([np.bincount(i, minlength=n) for i in ids], axis=1).astype(np.float64)  # (n, R)
    images_rng = np.random.default_rng(seed)
    seeds_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    both, fixed = np.empty((measures, resamples)), np.empty((measures, resamples))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        rows = np.arange(size)[:, None]
        images = np.bincount((rows * n + images_rng.integers(0, n, size=(size, n))).ravel(),
                             minlength=size * n).reshape(size, n).astype(np.float64)
        seeds = np.bincount((rows * count + seeds_rng.integers(0, count, size=(size, count))).ravel(),
                            minlength=size * count).reshape(size, count).astype(np.float64)
        weight = images @ counts  # (size, R): values each replicate contributes to each resample
        for k in range(measures):
            total = images @ sums[k]
            with np.errstate(invalid="ignore", divide="ignore"):  # a resample that drew no value at all
                both[k, start:start + size] = (seeds * total).sum(axis=1) / (seeds * weight).sum(axis=1)
                fixed[k, start:start + size] = total.sum(axis=1) / weight.sum(axis=1)
    tail = (1 - level) / 2
    out = []
    for k in range(measures):
        diff = float(np.concatenate([np.asarray(r[k], dtype=np.float64) for r in replicates]).mean())
        low, high = np.nanquantile(both[k], [tail, 1 - tail])
        fixed_low, fixed_high = np.nanquantile(fixed[k], [tail, 1 - tail])
        out.append((Interval(diff, float(low), float(high)), Interval(diff, float(fixed_low), float(fixed_high))))
    return out


def t_quantile(probability: float, df: int) -> float:
    """Student's t quantile for ``df`` ≥ 1 degrees of freedom (``probability`` > 0.5), by bisection on the exact
    closed-form distribution of integer degrees of freedom (Abramowitz & Stegun 26.7.3-4): no scipy needed."""
    def central(t: float) -> float:  # P(|T| < t)
        theta = math.atan(t / math.sqrt(df))
        c2, term, total = math.cos(theta) ** 2, 1.0, 1.0
        if df % 2:
            for i in range(1, (df - 1) // 2):  # 1 + (2/3)c² + (2·4)/(3·5)c⁴ + …, times sin·cos
                term *= c2 * 2 * i / (2 * i + 1)
                total += term
            return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
        for i in range(1, df // 2):  # 1 + (1/2)c² + (1·3)/(2·4)c⁴ + …, times sin
            term *= c2 * (2 * i - 1) / (2 * i)
            total += term
        return math.sin(theta) * total

    target, low, high = 2 * probability - 1, 0.0, 1.0
    while central(high) < target:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if central(middle) < target else (low, middle)
    return (low + high) / 2


def seeds_interval(diffs: list[float], level: float = LEVEL) -> Interval:
    """The mean of the per-replicate differences with a Student-t interval: each replicate one observation, so
    its width is the seed-to-seed spread (NaN below two replicates)."""
    values = np.asarray(diffs, dtype=np.float64)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan)
    half = t_quantile(1 - (1 - level) / 2, len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def sign_test(diffs: list[float]) -> float:
    """One-sided sign test: P(at least this many replicates above zero | each a fair coin), ties left out:
    5 of 5 positive gives 1/32 = 0.031."""
    above, nonzero = sum(d > 0 for d in diffs), sum(d != 0 for d in diffs)
    return sum(math.comb(nonzero, i) for i in range(above, nonzero + 1)) / 2 ** nonzero


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
    (correct, loss), (ref_correct, ref_loss) = per_image(logits, labels), per_image(reference_logits, labels)
    # one set of resamples for accuracy and loss (same seed): the two intervals describe the same draws
    accuracy, loss_interval = paired_bootstraps([(100 * correct, 100 * ref_correct), (loss, ref_loss)], resamples,
                                                seed)
    right, ref_right = correct.astype(bool), ref_correct.astype(bool)
    return Comparison(accuracy, loss_interval, mcnemar_exact(right, ref_right), int(np.sum(right != ref_right)))


def _clusters(images: list[list] | None, sizes: list[int]) -> list[np.ndarray]:
    """Each replicate's test rows as image ids shared across replicates: from the image keys, or (None) every
    row an image of its own."""
    if images is None:
        return list(np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1]))
    ids: dict = {}
    return [np.array([ids.setdefault(key, len(ids)) for key in map(tuple, keys)], dtype=np.int64) for keys in images]


def pooled_compare(replicates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], images: list[list] | None = None,
                   resamples: int = RESAMPLES, seed: int = SEED) -> PooledComparison:
    """(model logits, reference logits, labels) of several replicates — the whole pipeline under several seeds —
    pooled: the mean difference over every (replicate, test image) with its hierarchical interval
    (:func:`hierarchical_bootstraps`: replicates resampled, and test images, each with its differences in every
    replicate that tests it; ``images``: each replicate's image keys, e.g. ``store.prepared.test_rows``; None:
    no image is shared), the images-only interval, each replicate's difference with a t interval over them and
    a sign test, and McNemar over every discordant (replicate, image). One replicate is the plain comparison
    (:func:`compare`, its intervals on the same draws) with no seed interval."""
    scored = [(per_image(model, labels), per_image(reference, labels)) for model, reference, labels in replicates]
    diffs = [[100 * m[0] - 100 * r[0], m[1] - r[1]] for m, r in scored]
    per_replicate = tuple(float(d[0].mean()) for d in diffs)
    if len(replicates) == 1:  # no seed level: exactly the single comparison's resamples
        one = compare(*replicates[0], resamples=resamples, seed=seed)
        (accuracy, images_only), (loss, _) = (one.accuracy_pt, one.accuracy_pt), (one.loss, one.loss)
    else:
        clusters = _clusters(images, [len(d[0]) for d in diffs])
        (accuracy, images_only), (loss, _) = hierarchical_bootstraps(diffs, clusters, resamples, seed)
    right = np.concatenate([m[0] for m, _ in scored]).astype(bool)
    ref_right = np.concatenate([r[0] for _, r in scored]).astype(bool)
    return PooledComparison(accuracy, loss, mcnemar_exact(right, ref_right), int(np.sum(right != ref_right)),
                            images_only, seeds_interval(list(per_replicate)), per_replicate,
                            sign_test(per_replicate))
