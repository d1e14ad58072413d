"""Soup-analysis maths: pair sampling, similarity measures, transitivity, embedding, corruptions."""

import itertools
import math

import pandas as pd
import pytest
import torch

from soupflow.core import analysis
from soupflow.core.corruptions import CORRUPTIONS, corrupt_split
from soupflow.core.similarity import linear_cka, output_similarity, parameter_similarity, symmetric_kl


def test_all_pairs_when_few_and_a_seeded_sample_of_distinct_pairs_when_many():
    ids = [f"r{i}" for i in range(6)]
    assert analysis.sample_pairs(ids, 100, 0) == list(itertools.combinations(sorted(ids), 2))
    many = [f"r{i:03d}" for i in range(200)]
    sample = analysis.sample_pairs(many, 50, 3)
    assert len(sample) == len(set(sample)) == 50 and all(a < b for a, b in sample)
    assert sample == analysis.sample_pairs(many, 50, 3) and sample != analysis.sample_pairs(many, 50, 4)


def test_gains_are_positive_only_when_the_soup_beats_both_ingredients():
    assert analysis.loss_gain(0.5, 0.6, 0.45) == pytest.approx(0.05)
    assert analysis.loss_gain(0.5, 0.6, 0.55) < 0  # better than one ingredient is not enough
    assert analysis.accuracy_gain(0.80, 0.82, 0.81) < 0 < analysis.accuracy_gain(0.80, 0.82, 0.83)


def test_parameter_similarity_geometry():
    init = torch.zeros(4, dtype=torch.float64)
    a = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    b = torch.tensor([0, 1.0, 0, 0], dtype=torch.float64)
    same = parameter_similarity(a, a, init)
    assert same["l2_distance"] == 0 and same["cosine"] == pytest.approx(1) and same["angle_degrees"] == pytest.approx(0, abs=1e-6)
    orthogonal = parameter_similarity(a, b, init)
    assert orthogonal["angle_degrees"] == pytest.approx(90) and orthogonal["l2_distance"] == pytest.approx(math.sqrt(2))
    shifted = parameter_similarity(a + 5, b + 5, init + 5)  # task vectors are measured from the shared init
    assert shifted["angle_degrees"] == pytest.approx(90) and shifted["cosine"] > 0.9


def test_output_similarity_of_a_model_with_itself_and_cka_invariances():
    torch.manual_seed(0)
    logits, features = torch.randn(500, 10), torch.randn(500, 32)
    same = output_similarity(logits, logits, features, features)
    assert same["kl_divergence"] == pytest.approx(0, abs=1e-12) and same["logit_mse"] == 0
    assert same["cka_logits"] == pytest.approx(1) and same["cka_features"] == pytest.approx(1)
    rotation, _ = torch.linalg.qr(torch.randn(32, 32))
    assert linear_cka(features, 3.0 * features @ rotation) == pytest.approx(1)  # rotation and scale invariant
    assert linear_cka(features, torch.randn(500, 32)) < 0.2
    other = torch.randn(500, 10)
    assert symmetric_kl(logits, other) == pytest.approx(symmetric_kl(other, logits)) and symmetric_kl(logits, other) > 0


def pair_table(gains: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame([{"run_a": a, "run_b": b, "gain_loss": g} for (a, b), g in gains.items()])


def test_transitivity_counts_triplets_in_a_positive_cluster():
    # A, B, C soup well together; D soups badly with everyone
    gains = {("A", "B"): 0.1, ("A", "C"): 0.2, ("B", "C"): 0.3, ("A", "D"): -1.0, ("B", "D"): -2.0, ("C", "D"): -1.5}
    triples = analysis.triplets(pair_table(gains))
    assert len(triples) == 12  # 6 pairs (B,C) x 2 possible third models
    table = analysis.transitivity(triples).set_index("positive_with_a")
    assert table.n_triplets.tolist() == [3, 6, 3]
    assert table.loc[2, "p_positive_bc"] == 1.0  # A in the cluster with B and C: they soup
    assert table.loc[1, "p_positive_bc"] == 0.0  # one of B, C is D: they do not
    assert table.loc[0, "p_positive_bc"] == 1.0  # A is D, B and C are in the cluster
    row = triples[(triples.a == "A") & (triples.b == "B") & (triples.c == "C")].iloc[0]
    assert row.min_gain_with_a == pytest.approx(0.1) and row.positive_with_a == 2


def test_embedding_puts_positive_soups_close_and_the_outlier_far():
    gains = {("A", "B"): 0.1, ("A", "C"): 0.2, ("B", "C"): 0.3, ("A", "D"): -1.0, ("B", "D"): -2.0, ("C", "D"): -1.5}
    where = analysis.embedding(pair_table(gains), ["A", "B", "C", "D"]).set_index("run_id")

    def distance(p, q):
        return math.dist(where.loc[p, ["x", "y"]], where.loc[q, ["x", "y"]])

    assert max(distance("A", "B"), distance("A", "C"), distance("B", "C")) < min(distance(r, "D") for r in "ABC")


def test_spearman_and_correlation_table():
    x = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0])
    assert analysis.spearman(x, x ** 3) == pytest.approx(1) and analysis.spearman(x, -x) == pytest.approx(-1)
    assert math.isnan(analysis.spearman(x[:2], x[:2]))
    pairs = pd.DataFrame({"kl_divergence": [0.1, 0.2, 0.3, 0.4], "gain_loss": [0.3, 0.2, -0.1, -0.5]})
    table = analysis.correlations(pairs).set_index(["measure", "subset"])
    assert table.loc[("kl_divergence", "all"), "spearman"] == pytest.approx(-1)
    assert table.loc[("kl_divergence", "positive"), "n_pairs"] == 2


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_changes_images_more_at_higher_severity(name):
    ramp = torch.linspace(20, 220, 28).expand(16, 1, 28, 28)
    images = ramp.round().to(torch.uint8).clone()
    images[:, :, 8:20, 9:19] = 255  # edges for blur / pixelation / JPEG to destroy
    changes = []
    for severity in (1, 5):
        out = CORRUPTIONS[name](images, severity, torch.Generator().manual_seed(1))
        assert out.dtype == torch.uint8 and out.shape == images.shape
        changes.append((out.float() - images.float()).abs().mean().item())
    assert 0 < changes[0] < changes[1]


def test_corrupted_split_is_seeded_and_deals_every_combination():
    images = (torch.rand(60, 3, 16, 16) * 255).to(torch.uint8)
    labels = torch.arange(60)
    one = corrupt_split(lambda rows: images[rows], labels, ["gaussian_noise", "contrast", "jpeg"], [1, 5], 30, seed=7)
    two = corrupt_split(lambda rows: images[rows], labels, ["gaussian_noise", "contrast", "jpeg"], [1, 5], 30, seed=7)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert one["corrupted_x"].shape == (30, 3, 16, 16) and one["corrupted_y"].unique().numel() == 30
    combos = set(zip(one["corrupted_type"].tolist(), one["corrupted_severity"].tolist()))
    assert combos == {(t, s) for t in range(3) for s in (1, 5)}
