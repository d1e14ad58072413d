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


def test_the_shared_training_panel_compares_clean_and_corrupted_gains_in_one_metric():
    """P(gain > 0) on clean and on corrupted test in the same metric (the panel once set accuracy beside loss)."""
    pairs = pd.DataFrame({"shared_epochs": [1.0, 1.0, 1.0, 1.0],
                          "gain_accuracy": [0.01, -0.01, 0.02, -0.03], "gain_loss": [-0.1, -0.2, -0.3, -0.4],
                          "gain_accuracy_corrupted": [0.01, 0.02, 0.03, 0.04],  # all positive in accuracy ...
                          "gain_loss_corrupted": [-0.1, -0.2, -0.3, 0.4]})  # ... one positive in loss
    accuracy = analysis.shared_training(pairs, "gain_accuracy").iloc[0]
    assert accuracy.gain == "gain_accuracy"
    assert accuracy.p_positive == 0.5 and accuracy.p_positive_corrupted == 1.0
    loss = analysis.shared_training(pairs, "gain_loss").iloc[0]
    assert loss.gain == "gain_loss" and loss.p_positive == 0.0 and loss.p_positive_corrupted == 0.25


def test_every_table_is_computed_per_batchnorm_option_and_says_which():
    keep = {("A", "B"): -0.5, ("A", "C"): -0.4, ("B", "C"): -0.3}
    fresh = {("A", "B"): 0.1, ("A", "C"): 0.2, ("B", "C"): 0.3}
    pairs = pd.concat([pair_table(keep).assign(bn="keep"), pair_table(fresh).assign(bn="recompute")],
                      ignore_index=True)
    triples = analysis.per_bn(pairs, analysis.triplets)
    assert triples.columns[0] == "bn" and triples.groupby("bn").size().to_dict() == {"keep": 3, "recompute": 3}
    by_k = analysis.per_bn(triples, analysis.transitivity).set_index(["bn", "positive_with_a"])
    assert by_k.loc[("keep", 0), "n_triplets"] == 3 and by_k.loc[("recompute", 2), "p_positive_bc"] == 1.0
    placed = analysis.per_bn(pairs, lambda rows: analysis.embedding(rows, ["A", "B", "C"]))
    assert placed.groupby("bn").run_id.apply(sorted).to_dict() == {"keep": ["A", "B", "C"], "recompute": ["A", "B", "C"]}
    assert [bn for bn, _ in analysis.by_bn(pairs.iloc[::-1])] == ["keep", "recompute"]  # the catalog's order
    assert [bn for bn, _ in analysis.by_bn(pair_table(keep))] == ["keep"]  # a table without bn: averaged


# Pair soups of two tiny timm models, scored by the pair job, against a computation by hand.

def pair_job_files(folder, model_name: str, bn: list[str]):
    """Prepared tiny MNIST-format data, its corrupted copy, two runs of ``model_name`` (different seeds, BatchNorm
    running statistics set far from those of the data: what averaged statistics look like after drifting
    apart) with their metrics rows, outputs and corrupted logits, and the config of a pair job."""
    from test_data import write_tiny_idx_dataset

    from soupflow.core.evaluate import Evaluator
    from soupflow.core.models import create_model, save_checkpoint
    from soupflow.jobs.corrupted import make_corrupted
    from soupflow.jobs.pairs import PairPaths, RunFiles
    from soupflow.plan.config import merge_defaults
    from soupflow.store.data import TensorData
    from soupflow.store.datasets import prepare

    (folder / "idx").mkdir()
    root = write_tiny_idx_dataset(folder / "idx", n_train=200, n_test=40)
    data_path = str(folder / "data.safetensors")
    prepare({"name": "mnist", "root": str(root), "val_fraction": 0.3}, 0, data_path, str(folder / "splits.json"))
    corrupted = str(folder / "corrupted.safetensors")
    make_corrupted({"types": ["contrast"], "severities": [3], "max_images": 20, "seed": 0}, data_path, corrupted)
    config = merge_defaults({"model": {"name": model_name}, "evaluation": {"device": "cpu"},
                             "analysis": {"bn": bn, "bn_images": 48}})
    data = TensorData(data_path)

    def model(seed):
        torch.manual_seed(seed)
        net = create_model(config["model"], data.num_classes, 1).eval()
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-2.0, 2.0)
                module.running_var.uniform_(0.1, 5.0)
        return net

    runs = {}
    for seed, run_id in ((1, "run_a"), (2, "run_b")):
        net, files = model(seed), {k: str(folder / f"{run_id}_{k}") for k in ("model", "metrics", "outputs", "corrupted")}
        save_checkpoint(net.state_dict(), files["model"])
        row = {"run_id": run_id, "status": "ok"}
        for split in ("val", "test"):
            scores = Evaluator(model(0), data, split, torch.device("cpu")).scores(net.state_dict())
            row[f"{split}_loss"], row[f"{split}_accuracy"] = scores.loss, scores.accuracy
        pd.DataFrame([row]).to_parquet(files["metrics"])
        logits, features = Evaluator(model(0), data, "test", torch.device("cpu")).outputs(net.state_dict(), features=True)
        save_checkpoint({"test_logits": logits, "test_features": features}, files["outputs"])
        corrupted_logits = Evaluator(model(0), TensorData(corrupted), "corrupted", torch.device("cpu")).logits(net.state_dict())
        save_checkpoint({"logits": corrupted_logits}, files["corrupted"])
        runs[run_id] = RunFiles(files["model"], files["metrics"], files["outputs"], files["corrupted"])
    save_checkpoint(model(3).state_dict(), folder / "init.safetensors")
    paths = PairPaths(data_path, corrupted, str(folder / "pairs.parquet"),
                      {"final": str(folder / "init.safetensors"), "epochs": {}}, cache=str(folder / "cache"))
    return config, runs, paths, data, model


def midpoint_by_hand(runs) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    a, b = load_file(runs["run_a"].model), load_file(runs["run_b"].model)
    return {k: ((a[k].double() + b[k].double()) / 2).to(a[k].dtype) if a[k].is_floating_point() else a[k] for k in a}


def scores_by_hand(net, data, split):
    from soupflow.core.evaluate import scores_from_logits

    images, labels = data.split(split)
    with torch.no_grad():
        return scores_from_logits(net.eval()(data.normalise(images)), labels)


def test_pair_soups_score_averaged_and_re_estimated_batchnorm_statistics_as_computed_by_hand(tmp_path):
    from soupflow.core.batchnorm import sample_images
    from soupflow.jobs.pairs import pair_soups
    from soupflow.plan.seeds import pipeline_seed

    config, runs, paths, data, model = pair_job_files(tmp_path, "test_resnet", ["keep", "recompute"])
    table = pair_soups(config, [["run_a", "run_b"]], runs, paths).set_index("bn")
    assert table.index.tolist() == ["keep", "recompute"] and (table.status == "ok").all()

    averaged = model(0)
    averaged.load_state_dict(midpoint_by_hand(runs))
    fresh = model(0)
    fresh.load_state_dict(midpoint_by_hand(runs))
    for module in fresh.modules():  # a cumulative average over one batch: the train sample's own moments
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        fresh.train()(data.normalise(sample_images(data, 48, pipeline_seed(config, 0))))
    for bn, net in (("keep", averaged), ("recompute", fresh)):
        row = table.loc[bn]
        for split in ("val", "test"):
            expected = scores_by_hand(net, data, split)
            assert row[f"soup_{split}_loss"] == pytest.approx(expected.loss, rel=1e-4), (bn, split)
            assert row[f"soup_{split}_accuracy"] == pytest.approx(expected.accuracy), (bn, split)
        assert row.gain_loss == pytest.approx(min(row.test_loss_a, row.test_loss_b) - row.soup_test_loss)
    # the statistics matter here, and the runs' own figures and the similarity are the pair's, whatever the option
    assert table.loc["keep", "soup_val_loss"] != pytest.approx(table.loc["recompute", "soup_val_loss"], rel=1e-3)
    for column in ("test_loss_a", "val_accuracy_b", "kl_divergence", "cosine"):
        assert table.loc["keep", column] == table.loc["recompute", column]


def test_pair_rows_are_cached_per_batchnorm_option(tmp_path):
    from soupflow.jobs.pairs import pair_soups

    config, runs, paths, *_ = pair_job_files(tmp_path, "test_resnet", ["keep"])
    first = pair_soups(config, [["run_a", "run_b"]], runs, paths)
    assert first.bn.tolist() == ["keep"] and len(list((tmp_path / "cache").iterdir())) == 1
    both = {**config, "analysis": {**config["analysis"], "bn": ["keep", "recompute"]}}
    second = pair_soups(both, [["run_a", "run_b"]], runs, paths)
    assert second.bn.tolist() == ["keep", "recompute"] and len(list((tmp_path / "cache").iterdir())) == 2
    assert second.iloc[0].seconds == first.iloc[0].seconds  # the keep row came from the cache, not a new pass


def test_a_model_without_batchnorm_gets_keep_rows_only(tmp_path):
    from soupflow.jobs.pairs import pair_soups

    config, runs, paths, data, model = pair_job_files(tmp_path, "test_efficientnet_gn", ["keep", "recompute"])
    table = pair_soups(config, [["run_a", "run_b"]], runs, paths)
    assert table.bn.tolist() == ["keep"] and table.status.tolist() == ["ok"]
    averaged = model(0)
    averaged.load_state_dict(midpoint_by_hand(runs))
    assert table.soup_test_loss.iloc[0] == pytest.approx(scores_by_hand(averaged, data, "test").loss, rel=1e-4)
