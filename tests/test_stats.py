"""Paired statistics: bootstrap intervals and McNemar's exact test against known cases."""

import math

import numpy as np
import torch

from soupflow.core.stats import compare, mcnemar_exact, paired_bootstrap, per_image, pooled_compare


def logits_for(predictions: torch.Tensor, classes: int = 10, confidence: float = 3.0) -> torch.Tensor:
    logits = torch.zeros(predictions.shape[0], classes)
    logits[torch.arange(predictions.shape[0]), predictions] = confidence
    return logits


def test_a_model_against_itself_is_exactly_zero_with_p_one():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=generator)
    logits = torch.randn(2000, 10, generator=generator)
    result = compare(logits, logits.clone(), labels)
    assert (result.accuracy_pt.diff, result.accuracy_pt.low, result.accuracy_pt.high) == (0.0, 0.0, 0.0)
    assert (result.loss.diff, result.loss.low, result.loss.high) == (0.0, 0.0, 0.0)
    assert result.mcnemar_p == 1.0 and not result.wins and result.disagreements == 0


def test_a_constructed_difference_is_covered_and_significant():
    n = 10_000
    labels = torch.zeros(n, dtype=torch.long)
    reference = torch.zeros(n, dtype=torch.long)
    reference[:1500] = 1  # reference wrong on the first 1,500 images: 85.00 %
    model = reference.clone()
    model[:300] = 0  # right on 300 of them ...
    model[5000:5100] = 2  # ... wrong on 100 others: 87.00 %, a difference of exactly +2.00 points
    result = compare(logits_for(model), logits_for(reference), labels)
    assert math.isclose(result.accuracy_pt.diff, 2.0, abs_tol=1e-9)
    assert result.accuracy_pt.low < 2.0 < result.accuracy_pt.high
    assert result.accuracy_pt.low > 0 and result.wins
    # 400 disagreements, 100 against: the exact two-sided binomial tail is far below 1e-6
    assert result.disagreements == 400 and result.mcnemar_p < 1e-6
    assert result.loss.high < 0  # fewer confident mistakes: lower loss


def test_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    truth, covered, trials = 0.03, 0, 200
    for trial in range(trials):
        model = (rng.random(1000) < 0.80 + truth).astype(float)
        reference = (rng.random(1000) < 0.80).astype(float)
        interval = paired_bootstrap(model, reference, resamples=400, seed=trial)
        covered += interval.low <= truth <= interval.high
    assert 0.88 <= covered / trials <= 0.99


def test_mcnemar_matches_the_binomial_tail():
    right = np.array([1] * 10 + [0] * 0, dtype=bool)
    assert math.isclose(mcnemar_exact(right, ~right), 2 * 0.5**10)  # b = 10, c = 0
    b, c = 12, 4  # model right / reference wrong on 12 images, the reverse on 4
    model = np.array([1] * b + [0] * c + [1] * 50, dtype=bool)
    reference = np.array([0] * b + [1] * c + [1] * 50, dtype=bool)
    expected = 2 * sum(math.comb(b + c, i) for i in range(c + 1)) / 2 ** (b + c)
    assert math.isclose(mcnemar_exact(model, reference), expected, rel_tol=1e-12)
    assert mcnemar_exact(model, reference) == mcnemar_exact(reference, model)  # two-sided
    assert mcnemar_exact(np.array([1, 0], bool), np.array([0, 1], bool)) == 1.0  # b = c: no evidence


def test_per_image_scores_match_the_mean_scores():
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (300,), generator=generator)
    logits = torch.randn(300, 5, generator=generator)
    correct, loss = per_image(logits, labels)
    assert math.isclose(correct.mean(), (logits.argmax(1) == labels).float().mean().item(), rel_tol=1e-6)
    assert math.isclose(loss.mean(), torch.nn.functional.cross_entropy(logits, labels).item(), rel_tol=1e-5)


def _constructed(n: int, wrong: int, fixed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels, a reference wrong on ``wrong`` images and a model that fixes ``fixed`` of them (+100·fixed/n pt)."""
    labels = torch.zeros(n, dtype=torch.long)
    reference = torch.zeros(n, dtype=torch.long)
    reference[:wrong] = 1
    model = reference.clone()
    model[:fixed] = 0
    return logits_for(model), logits_for(reference), labels


def test_a_replicate_pooled_against_itself_is_exactly_zero():
    generator = torch.Generator().manual_seed(3)
    replicates = []
    for n in (500, 800, 650):  # each replicate has its own test split, of its own size
        logits = torch.randn(n, 10, generator=generator)
        replicates.append((logits, logits.clone(), torch.randint(0, 10, (n,), generator=generator)))
    for images in (None, [[(i,) for i in range(len(r[2]))] for r in replicates]):
        pooled = pooled_compare(replicates, images)
        assert (pooled.accuracy_pt.diff, pooled.accuracy_pt.low, pooled.accuracy_pt.high) == (0.0, 0.0, 0.0)
        assert (pooled.loss.diff, pooled.loss.low, pooled.loss.high) == (0.0, 0.0, 0.0)
        assert pooled.mcnemar_p == 1.0 and pooled.disagreements == 0 and not pooled.wins


def test_pooling_weighs_each_image_once_and_one_replicate_is_the_plain_comparison():
    a = _constructed(4000, 800, 80)  # +2.00 pt on 4,000 images
    b = _constructed(2000, 400, 0)  # +0.00 pt on 2,000 images
    one, alone = compare(*a), pooled_compare([a])
    assert (one.accuracy_pt, one.loss, one.mcnemar_p) == (alone.accuracy_pt, alone.loss, alone.mcnemar_p)
    mixed = pooled_compare([a, b])
    assert math.isclose(mixed.accuracy_pt.diff, 100 * 80 / 6000, abs_tol=1e-9)  # mean over all 6,000 images
    assert mixed.accuracy_pt.low < mixed.accuracy_pt.diff < mixed.accuracy_pt.high
    assert mixed.disagreements == 80 and mixed.mcnemar_p < 1e-6


def test_replicates_that_test_the_same_images_are_resampled_together():
    """The same gain on the same images twice is no more evidence than once: with the images named, the
    interval of a replicate pooled with its copy is the single interval; treated as other images, it narrows."""
    a = _constructed(4000, 800, 80)
    keys = [("test", i) for i in range(4000)]
    one = compare(*a)
    shared = pooled_compare([a, a], [keys, keys])
    assert (shared.accuracy_pt.diff, shared.accuracy_pt.low, shared.accuracy_pt.high) == (
        one.accuracy_pt.diff, one.accuracy_pt.low, one.accuracy_pt.high)
    apart = pooled_compare([a, a])
    assert apart.accuracy_pt.high - apart.accuracy_pt.low < 0.8 * (one.accuracy_pt.high - one.accuracy_pt.low)


def test_the_clustered_interval_covers_a_known_pooled_mean_about_95_percent_of_the_time():
    """Three replicates on one shared set of images whose difficulty they share: the truth is the mean gain."""
    rng = np.random.default_rng(4)
    covered, trials, n = 0, 200, 600
    for trial in range(trials):
        hard = rng.random(n) < 0.3  # images every replicate finds hard
        gains = (0.0, 0.06, 0.03)
        base = np.where(hard, 0.4, 0.9)
        models = [(rng.random(n) < base + g).astype(float) for g in gains]
        references = [(rng.random(n) < base).astype(float) for _ in gains]
        interval = paired_bootstrap(np.concatenate(models), np.concatenate(references), resamples=400, seed=trial,
                                    clusters=np.tile(np.arange(n), len(gains)))
        covered += interval.low <= np.mean(gains) <= interval.high
    assert 0.88 <= covered / trials <= 0.99


def test_the_summary_says_in_one_line_when_the_two_best_runs_do_not_soup():
    import pandas as pd

    from soupflow.report.summary import format_soupability

    rows = pd.DataFrame({"soup": ["uniform", "uniform_bn"], "bn": ["keep", "recompute"],
                         "precheck_midpoint_val_accuracy": [0.02, 0.70], "precheck_pair_val_accuracy": [0.74, 0.74],
                         "soupability": ["collapsed", "barrier"]})
    line = format_soupability(rows)
    assert line.count("\n") == 1 and "2.00 %" in line and "collapsed" in line and "bn: recompute" in line
    assert format_soupability(rows.assign(soupability="ok")) == ""
