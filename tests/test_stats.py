"""Paired statistics: bootstrap intervals and McNemar's exact test against known cases."""

import math

import numpy as np
import torch

from soupflow.core.stats import (
    compare,
    mcnemar_exact,
    paired_bootstrap,
    per_image,
    pooled_compare,
    seeds_interval,
    sign_test,
    t_quantile,
)


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


def _width(interval) -> float:
    return interval.high - interval.low


def test_replicates_that_test_the_same_images_are_resampled_together():
    """The same gain on the same images twice (or three times) is no more evidence than once: with the images
    named, the interval of a replicate pooled with its copies is the single interval (the hierarchical one and
    the images-only one); treated as other images, it narrows."""
    a = _constructed(4000, 800, 80)
    keys = [("test", i) for i in range(4000)]
    one = compare(*a)
    for copies in (2, 3):
        shared = pooled_compare([a] * copies, [keys] * copies)
        for interval in (shared.accuracy_pt, shared.images_pt):
            assert all(math.isclose(x, y, abs_tol=1e-9) for x, y in zip(
                (interval.diff, interval.low, interval.high), (one.accuracy_pt.diff, one.accuracy_pt.low,
                                                              one.accuracy_pt.high)))
        assert shared.seeds_pt.low == shared.seeds_pt.high == 2.0 and shared.replicate_pt == (2.0,) * copies
    apart = pooled_compare([a, a])
    assert _width(apart.images_pt) < 0.8 * _width(one.accuracy_pt)  # twice the images, held fixed
    # resampling the replicates too gives some of it back: a resample may hold one copy's images only
    assert _width(apart.images_pt) < _width(apart.accuracy_pt) < 0.95 * _width(one.accuracy_pt)


def _replicate(n: int, gain: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A replicate on ``n`` images (the same images in every replicate): the reference wrong on the first 20 %,
    the model fixing ``gain`` of them (gain > 0) or breaking ``-gain`` images the reference gets right."""
    labels = torch.zeros(n, dtype=torch.long)
    reference = torch.zeros(n, dtype=torch.long)
    reference[:n // 5] = 1
    model = reference.clone()
    if gain > 0:
        model[:gain] = 0
    else:
        model[n // 2:n // 2 - gain] = 1
    return logits_for(model), logits_for(reference), labels


def test_a_gain_that_changes_sign_across_replicates_is_not_shown_however_many_test_images():
    """+2, −1, +2, −1 points over four replicates: a mean of +0.5 that test-image noise alone calls real (the
    images-only interval is far above zero and narrows with more images), but the seed-to-seed spread does not
    shrink with test images, so the hierarchical interval and the t interval both cover zero: no verdict."""
    widths = []
    for n in (10_000, 40_000):
        replicates = [_replicate(n, gain * n // 100) for gain in (2, -1, 2, -1)]
        keys = [[("test", i) for i in range(n)]] * len(replicates)
        pooled = pooled_compare(replicates, keys)
        assert math.isclose(pooled.accuracy_pt.diff, 0.5, abs_tol=1e-9)
        assert all(math.isclose(d, g, abs_tol=1e-9) for d, g in zip(pooled.replicate_pt, (2, -1, 2, -1)))
        assert pooled.images_pt.low > 0.25  # test-set noise alone: "wins"
        assert pooled.accuracy_pt.low < 0 < pooled.accuracy_pt.high
        assert pooled.seeds_pt.low < 0 < pooled.seeds_pt.high
        assert not pooled.wins and not pooled.loses and pooled.sign_p == 0.6875
        widths.append((_width(pooled.images_pt), _width(pooled.accuracy_pt)))
    (images_10k, both_10k), (images_40k, both_40k) = widths
    assert images_40k < 0.6 * images_10k and both_40k > 0.9 * both_10k  # more images narrow only the first


def test_the_seed_interval_and_the_sign_test_match_known_values():
    """The t quantiles of a table, the issue's five replicate differences, and 5 of 5 positive replicates."""
    for df, quantile in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert math.isclose(t_quantile(0.975, df), quantile, abs_tol=5e-4)
    interval = seeds_interval([0.52, 0.50, -0.10, 0.60, 0.21])
    assert math.isclose(interval.diff, 0.346) and math.isclose(interval.low, -0.0138, abs_tol=1e-3)
    assert math.isclose(interval.high, 0.7058, abs_tol=1e-3) and math.isnan(seeds_interval([0.5]).low)
    assert sign_test([0.1] * 5) == 1 / 32 and sign_test([0.52, 0.50, -0.10, 0.60, 0.21]) == 6 / 32
    assert sign_test([0.0, 0.0]) == 1.0  # ties carry no sign


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
                         "precheck_midpoint_val_accuracy": [0.02, 0.02], "precheck_pair_val_accuracy": [0.74, 0.74],
                         "soupability": ["collapsed", "collapsed"],
                         "precheck_midpoint_recompute_val_accuracy": [0.73, 0.73],
                         "soupability_recompute": ["ok", "ok"]})
    line = format_soupability(rows)
    assert line.count("\n") == 1 and "2.00 %" in line and "collapsed" in line and "73.00 %" in line
    assert "use bn: recompute" in line  # the advice follows the re-estimated statistics
    both = format_soupability(rows.assign(soupability_recompute="barrier", precheck_midpoint_recompute_val_accuracy=0.70))
    assert "barrier even with re-estimated" in both and "use bn: recompute" not in both
    plain = rows.assign(precheck_midpoint_recompute_val_accuracy=float("nan"), soupability_recompute="n/a")
    assert "2.00 %" in format_soupability(plain) and "bn: recompute" not in format_soupability(plain)  # no BatchNorm
    assert format_soupability(rows.assign(soupability="ok")) == ""
