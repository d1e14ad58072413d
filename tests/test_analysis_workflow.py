"""`snakemake analysis` on the smoke experiment: pairwise soups, gains, similarity, sanity, tables and plots."""

import math

import pandas as pd
import pytest
import timm
import torch
from conftest import SMOKE, snakemake
from safetensors.torch import load_file

from soupflow.core.evaluate import scores_from_logits
from soupflow.store.data import TensorData

pytestmark = pytest.mark.slow  # runs the workflow (or trains) in subprocesses: the slow tier


@pytest.fixture(scope="module")
def analysed(finished):
    work, _ = finished
    result = snakemake(work, SMOKE, "analysis")
    assert result.returncode == 0, result.stderr[-4000:]
    return work, result


def table(work, name):
    return pd.read_parquet(work / "results/analysis" / f"{name}.parquet")


def test_every_table_and_plot_is_written(analysed):
    work, _ = analysed
    for name in ("pairs", "correlations", "triplets", "transitivity", "embedding", "robustness", "shared_training",
                 "headline", "sanity"):
        assert (work / "results/analysis" / f"{name}.parquet").exists(), name
    for plot in ("similarity", "similarity_positive", "transitivity", "embedding", "shared_training", "corrupted"):
        assert (work / "results/analysis/plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"


def test_gains_follow_their_definition_and_diverged_runs_are_skipped(analysed):
    work, _ = analysed
    pairs = table(work, "pairs")
    runs = pd.concat([pd.read_parquet(p) for p in (work / "results/runs").glob("*/metrics.parquet")]).set_index("run_id")
    assert len(pairs) and set(pairs.run_a) | set(pairs.run_b) <= set(runs[runs.status == "ok"].index)
    expected = pairs[["test_loss_a", "test_loss_b"]].min(axis=1) - pairs.soup_test_loss
    assert (pairs.gain_loss - expected).abs().max() < 1e-12
    assert (pairs.test_loss_a == runs.loc[pairs.run_a, "test_loss"].values).all()
    branch_runs = runs[runs.hp_perturbation.notna()]
    assert set(branch_runs.hp_perturbation) == {"salty1", "salty2"} and set(branch_runs.hp_branch_epoch) == {1}
    assert set(pairs.shared_epochs) <= {1.0, 2.0}


def test_every_pair_is_scored_with_averaged_and_re_estimated_batchnorm_statistics(analysed):
    work, _ = analysed
    pairs = table(work, "pairs")
    by_pair = pairs.groupby(["run_a", "run_b"]).bn.apply(sorted)
    assert len(by_pair) and (by_pair.map(tuple) == ("keep", "recompute")).all()  # test_resnet has BatchNorm
    for name in ("correlations", "triplets", "transitivity", "embedding", "robustness", "shared_training", "headline"):
        assert set(table(work, name).bn) <= {"keep", "recompute"}, name
    assert set(table(work, "headline").bn) == {"keep", "recompute"}


def test_a_pair_soup_is_the_midpoint_of_its_two_models(analysed):
    work, _ = analysed
    pairs = table(work, "pairs")
    pair = pairs[pairs.bn == "keep"].iloc[0]  # averaged statistics: the plain midpoint
    a = load_file(work / "results/runs" / pair.run_a / "model.safetensors")
    b = load_file(work / "results/runs" / pair.run_b / "model.safetensors")
    midpoint = {k: ((a[k].double() + b[k].double()) / 2).to(a[k].dtype) if a[k].is_floating_point() else a[k] for k in a}
    data = TensorData(work / "results/data/dataset.safetensors")
    images, labels = data.split("test")
    model = timm.create_model(SMOKE["model"]["name"], num_classes=data.num_classes, in_chans=images.shape[1])
    model.load_state_dict(midpoint)
    with torch.inference_mode():
        scores = scores_from_logits(model.eval()(data.normalise(images)), labels)
    assert scores.loss == pytest.approx(pair.soup_test_loss, rel=1e-5)
    assert scores.accuracy == pytest.approx(pair.soup_test_accuracy)


def test_sanity_self_soup_gains_exactly_zero_and_untrained_soups_do_not_gain(analysed):
    work, _ = analysed
    checks = table(work, "sanity").set_index("check")
    assert checks.loc["self", "gain_loss"] == 0.0 and checks.loc["self", "gain_accuracy"] == 0.0
    # Two untrained models: the soup classifies no better than either. (Its loss can be a hair lower: averaging
    # two random networks shrinks the logits towards uniform predictions, i.e. towards ln(classes).)
    assert checks.loc["untrained", "gain_accuracy"] <= 0
    assert checks.loc["untrained", "soup_test_loss"] > 0.9 * math.log(10)


def test_headline_and_report_include_the_analysis(analysed, tmp_path):
    work, _ = analysed
    headlines = table(work, "headline").set_index("bn")
    pairs = table(work, "pairs")
    for bn, headline in headlines.iterrows():
        rows = pairs[pairs.bn == bn]
        assert headline.n_pairs == len(rows)
        assert headline.fraction_positive_loss == pytest.approx((rows.gain_loss > 0).mean())
        positive = rows.gain_accuracy[rows.gain_accuracy > 0]
        assert headline.conditional_gain_accuracy == pytest.approx(positive.mean(), nan_ok=True)
    report = work / "report.html"
    result = snakemake(work, SMOKE, "analysis", "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text(errors="replace")
    assert "Analysis" in html and "transitivity" in html


def test_adding_runs_to_a_finished_analysis_computes_only_their_pairs(analysed, tmp_path):
    """Pair results are cached by content: after one more grid value, the pair soups computed are exactly the
    usable pairs that include the new runs, though every pair job runs again (the pairs are dealt anew).
    Counts are of rows: a pair and a BatchNorm option."""
    import re
    import shutil

    work = tmp_path / "work"
    shutil.copytree(analysed[0], work, symlinks=True)
    config = {**SMOKE, "analysis": {**SMOKE["analysis"], "pairs": 1000}}  # every pair
    assert snakemake(work, config, "analysis").returncode == 0

    def computed():
        counts = [re.findall(r"pair soups: (\d+) computed, (\d+) from the cache", p.read_text())
                  for p in (work / "results/logs/analysis").glob("pairs_*.log")]
        return sum(int(c[-1][0]) for c in counts if c), sum(int(c[-1][1]) for c in counts if c)

    for log in (work / "results/logs/analysis").glob("pairs_*.log"):
        log.unlink()
    grown = {**config, "grid": {**config["grid"], "lr": [*config["grid"]["lr"], 0.02]}}
    result = snakemake(work, grown, "analysis")
    assert result.returncode == 0, result.stderr[-3000:]
    from soupflow.plan.config import resolve_config
    from soupflow.plan.grid import expand_runs

    pairs = table(work, "pairs")
    new_runs = set(expand_runs(resolve_config(grown, False, False))) - set(expand_runs(resolve_config(config, False, False)))
    assert len(new_runs) == 2  # lr 0.02 x the two weight decays
    involving = pairs[(pairs.run_a.isin(new_runs) | pairs.run_b.isin(new_runs)) & (pairs.status == "ok")]
    fresh, reused = computed()
    assert len(involving) > 0 and fresh == len(involving)
    assert reused == int((pairs.status == "ok").sum()) - len(involving)
