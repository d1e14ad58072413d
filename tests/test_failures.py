"""A run whose training raises is a recorded result (status=failed, left out of soups); a run stopped from
outside (signal, time limit) is not: its job fails without writing outputs so that a rerun resumes it."""

import math

import pandas as pd
import pytest
import torch
import yaml
from conftest import SMOKE, finetune_in
from safetensors.torch import load_file

from soupflow.core import resume
from soupflow.jobs import finetune as finetune_job
from soupflow.jobs import soup as soup_job
from soupflow.plan.config import resolve_config

pytestmark = pytest.mark.slow  # runs the workflow (or trains) in subprocesses: the slow tier


@pytest.fixture
def smoke_run(finished):
    """(config, a finished run's folder, its hyperparameters, the prepared data, the shared init)."""
    work, _ = finished
    run_dir = sorted((work / "results/runs").iterdir())[0]
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    config = resolve_config(SMOKE, check_model=False)
    return config, run_dir, recorded["hyperparameters"], work / "results/data/dataset.safetensors", work / recorded["init"]


def test_a_run_that_raises_is_recorded_as_failed_and_left_out_of_soups(smoke_run, tmp_path, monkeypatch):
    config, good_run, hp, data, init = smoke_run

    def broken(*args, **kwargs):
        raise ValueError("this optimizer cannot take these settings")

    monkeypatch.setattr(finetune_job, "train", broken)  # the name the fine-tune job calls
    out = tmp_path / "run-0000000000"
    row = finetune_in(config, out.name, hp, data, init, out)

    assert row["status"] == "failed" and "ValueError: this optimizer" in row["error"]
    assert math.isnan(row["val_accuracy"]) and math.isnan(row["test_loss"])
    table = pd.read_parquet(out / "metrics.parquet")
    assert table.status.tolist() == ["failed"]
    weights, init_weights = load_file(out / "model.safetensors"), load_file(init)
    assert all(torch.equal(weights[name], init_weights[name]) for name in init_weights)  # nothing half-trained
    rows = pd.concat([pd.read_parquet(good_run / "metrics.parquet"), table], ignore_index=True)
    rows["model_file"] = [str(good_run / "model.safetensors"), str(out / "model.safetensors")]
    ingredients = soup_job.usable_ingredients(rows)
    assert [ingredient.name for ingredient in ingredients] == [good_run.name]


def test_a_stop_request_fails_the_job_and_writes_no_outputs(smoke_run, tmp_path, monkeypatch):
    config, _, hp, data, init = smoke_run

    def stopped(*args, **kwargs):
        raise resume.Preempted("SIGTERM")

    monkeypatch.setattr(finetune_job, "train", stopped)
    out = tmp_path / "run-0000000001"
    with pytest.raises(resume.Preempted):
        finetune_in(config, out.name, hp, data, init, out)
    assert not (out / "model.safetensors").exists() and not (out / "metrics.parquet").exists()
