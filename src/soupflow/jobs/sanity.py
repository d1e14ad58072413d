"""The sanity soups of the analysis: a model souped with itself and two untrained models, the two cases whose
gains the definitions fix (exactly 0; no accuracy gain)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from soupflow.core import analysis
from soupflow.core.average import average
from soupflow.core.models import set_threads, untrained_state
from soupflow.jobs.context import JobContext
from soupflow.jobs.pairs import RunFiles, run_row
from soupflow.store.io import atomic_write_parquet, read_safetensors


def sanity(config: dict[str, Any], data_path: str, runs: list[RunFiles], out_path: str, threads: int = 1) -> pd.DataFrame:
    """Two checks of the gain definition, evaluated in one job: a model souped with itself gains exactly 0, and
    two untrained models (different seeds) gain nothing in accuracy from souping."""
    set_threads(threads)
    context = JobContext.open(config, data_path, threads)
    test = context.evaluator("test")
    rows = [run_row(files.metrics) | {"model_file": files.model} for files in runs]
    usable = [r for r in rows if r["status"] == "ok"]
    cases = []
    if usable:
        best = max(usable, key=lambda r: r["val_accuracy"])
        weights = read_safetensors(best["model_file"])
        cases.append(("self", best["run_id"], best["run_id"], weights, weights))
    untrained = [untrained_state(context.data, config["model"], seed) for seed in (1, 2)]
    cases.append(("untrained", "untrained-seed1", "untrained-seed2", *untrained))
    out = []
    for check, name_a, name_b, state_a, state_b in cases:
        score_a, score_b = test.scores(state_a), test.scores(state_b)
        soup = test.scores(average(iter((state_a, state_b))))
        out.append({"check": check, "run_a": name_a, "run_b": name_b, "test_loss_a": score_a.loss,
                    "test_loss_b": score_b.loss, "soup_test_loss": soup.loss,
                    "gain_loss": analysis.loss_gain(score_a.loss, score_b.loss, soup.loss),
                    "gain_accuracy": analysis.accuracy_gain(score_a.accuracy, score_b.accuracy, soup.accuracy)})
    table = pd.DataFrame(out)
    atomic_write_parquet(table, out_path)
    return table
