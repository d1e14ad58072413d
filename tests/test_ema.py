"""The moving average of a run's weights (``ema_decay``, timm's ModelEmaV3): timm's formula over the optimiser
steps, a checkpoint plain timm loads, scores of its own, and the ingredients of soups with ``ingredients: ema``.
(Its survival of a kill and resume: tests/test_resume.py, whose worker keeps one.)"""

import copy
import math
import os

import pandas as pd
import pytest
import timm
import torch
import yaml
from conftest import ROOT
from safetensors import safe_open
from safetensors.torch import load_file

from soupflow.core import train as train_module
from soupflow.core.models import checkpoint_metadata, model_for, save_checkpoint
from soupflow.core.train import TensorSource, train
from soupflow.jobs.finetune import RunPaths, RunSpec, finetune
from soupflow.jobs.soup import SoupPaths, make_soup
from soupflow.jobs.soup_cache import soup_key
from soupflow.plan.config import merge_defaults, resolve_config
from soupflow.plan.errors import ConfigError
from soupflow.plan.layout import run_files, soup_files
from soupflow.store.datasets import open_data, prepare
from soupflow.store.tables import RUN_FILE_COLUMNS, write_runs_table

HP = {"lr": 0.05, "weight_decay": 1e-4, "epochs": 2, "batch_size": 8, "optimizer": "sgd", "momentum": 0.9,
      "nesterov": True, "seed": 3, "schedule": "onecycle", "augmentation": "none", "ema_decay": 0.7}


class Data:
    def normalise(self, images):
        return images.float() / 255.0


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))


def test_the_moving_average_is_timms_formula_over_the_optimiser_steps(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 6, 6), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 3, (40,), generator=generator)
    model = tiny_net()
    weights = [copy.deepcopy(model.state_dict())]  # before training, then after every optimiser step
    step = train_module.Loop.step

    def recorded(loop, *args):
        loss = step(loop, *args)
        weights.append(copy.deepcopy(loop.model.state_dict()))
        return loss

    monkeypatch.setattr(train_module.Loop, "step", recorded)
    result = train(model, TensorSource.of(images, labels, HP), Data(), HP, torch.device("cpu"), log_every=10**6)
    assert result.steps == 10 and len(weights) == 11
    expected = dict(weights[0])
    for steps_done, state in enumerate(weights[1:], start=1):
        decay = 0.0 if steps_done == 1 else HP["ema_decay"]  # ModelEmaV3.get_decay: the first step copies
        expected = {name: decay * expected[name] + (1 - decay) * value if value.is_floating_point() else value
                    for name, value in state.items()}
    assert result.ema.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.allclose(result.ema[name], value, rtol=1e-5, atol=1e-6), name
    assert not torch.allclose(result.ema["4.weight"], model.state_dict()["4.weight"])  # an average, not the weights
    assert not torch.allclose(result.ema["1.running_mean"], model.state_dict()["1.running_mean"])  # statistics too


def test_without_ema_decay_the_loop_keeps_no_average():
    images, labels = torch.zeros(16, 1, 6, 6, dtype=torch.uint8), torch.zeros(16, dtype=torch.long)
    hp = {**HP, "ema_decay": None, "epochs": 1}
    assert train(tiny_net(), TensorSource.of(images, labels, hp), Data(), hp, torch.device("cpu")).ema is None


# ---------------------------------------------------------------- fine-tunes, files, soups
@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Three tiny fine-tunes of test_resnet from one init, two with a moving average and one without, laid
    out as the workflow does when a run of the grid has ema_decay: (config, data, {run id: folder}, runs table)."""
    from test_data import write_tiny_idx_dataset

    folder = tmp_path_factory.mktemp("ema")
    write_tiny_idx_dataset(folder, n_train=160, n_test=40)
    data_config = {"name": "fashion_mnist", "root": str(folder), "pretrain_fraction": 0.0, "val_fraction": 0.25}
    prepare(data_config, 0, str(folder / "data.safetensors"), str(folder / "splits.json"))
    config = merge_defaults({"model": {"name": "test_resnet"}, "data": data_config,
                             "finetune": {"epochs": 2, "batch_size": 40}})
    data = open_data(str(folder / "data.safetensors"))
    init = folder / "init.safetensors"
    save_checkpoint(model_for(data, config["model"]).state_dict(), init, checkpoint_metadata(config["model"], data))
    runs = {"run-ema1": {"lr": 0.05, "ema_decay": 0.5}, "run-ema2": {"lr": 0.02, "ema_decay": 0.8},
            "run-plain": {"lr": 0.03}}
    folders = {}
    for run_id, hp in runs.items():
        folders[run_id] = folder / "runs" / run_id
        paths = RunPaths(**run_files(str(folders[run_id]), ema=True))
        finetune(config, RunSpec(str(folder / "data.safetensors"), str(init), run_id, {**config["finetune"], **hp}),
                 paths)
    files = {kind: [run_files(str(f), ema=True)[kind] for f in folders.values()]
             for kind in ("model", "outputs", "ema")}
    table = folder / "runs.parquet"
    write_runs_table([run_files(str(f))["metrics"] for f in folders.values()], files, str(table))
    return config, str(folder / "data.safetensors"), folders, str(table)


def test_the_average_is_saved_beside_the_weights_and_loads_in_plain_timm(grid):
    _, _, folders, _ = grid
    path = folders["run-ema1"] / "ema.safetensors"
    overlay = {"file": str(path), "num_classes": 10, "input_size": (1, 28, 28)}  # what its header holds
    model = timm.create_model("test_resnet", pretrained=True, num_classes=10, in_chans=1,
                              pretrained_cfg_overlay=overlay)
    saved, weights = load_file(str(path)), load_file(str(folders["run-ema1"] / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert any(not torch.equal(saved[k], weights[k]) for k in saved)  # the average, not the run's weights
    with safe_open(str(path), "pt") as ema, safe_open(str(folders["run-ema1"] / "model.safetensors"), "pt") as run:
        meta, run_meta = ema.metadata(), run.metadata()
    assert set(run_meta) <= set(meta) and meta["model"] == "test_resnet" and meta["run_id"] == "run-ema1"
    assert meta["weights"] == "ema" and float(meta["ema_decay"]) == 0.5


def test_a_run_without_ema_decay_links_its_weights_and_has_no_scores_of_an_average(grid):
    _, _, folders, table = grid
    plain = folders["run-plain"]
    assert os.path.samefile(plain / "ema.safetensors", plain / "model.safetensors")
    rows = pd.read_parquet(table).set_index("run_id")
    assert rows.loc["run-plain", ["ema_val_accuracy", "ema_test_loss"]].isna().all()
    for run_id in ("run-ema1", "run-ema2"):
        assert 0 <= rows.loc[run_id, "ema_val_accuracy"] <= 1 and math.isfinite(rows.loc[run_id, "ema_test_loss"])
        with safe_open(str(folders[run_id] / "outputs.safetensors"), "pt") as outputs:
            assert {"ema_val_logits", "ema_test_logits", "val_logits"} <= set(outputs.keys())
    assert RUN_FILE_COLUMNS["ema"] in rows.columns


def test_a_uniform_soup_of_ema_ingredients_is_the_mean_of_the_averages(grid, tmp_path):
    config, data, folders, table = grid
    entry = {"recipe": "uniform", "ingredients": "ema"}
    paths = SoupPaths(data, table, **soup_files(str(tmp_path / "soup")))
    row = make_soup(config, "uniform_ema", entry, paths).iloc[0]
    assert sorted(row.ingredients) == ["run-ema1@ema", "run-ema2@ema"]  # the run without one is left out
    assert not math.isnan(row.ensemble_val_accuracy)  # their cached logits: the ensemble is scored
    soup = load_file(str(tmp_path / "soup" / "model.safetensors"))
    averages = [load_file(str(folders[run_id] / "ema.safetensors")) for run_id in ("run-ema1", "run-ema2")]
    for name, value in soup.items():
        if value.is_floating_point():
            assert torch.allclose(value, (averages[0][name] + averages[1][name]) / 2, atol=1e-6), name
    final = soup_key(config, {"recipe": "uniform"}, paths, None)
    assert soup_key(config, entry, paths, None) != final  # the cache tells the two pools apart


def test_the_fine_tune_writes_its_scalars_for_tensorboard(grid):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, folders, _ = grid
    board = EventAccumulator(str(folders["run-ema1"] / "tb"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_second", "val/accuracy", "val/ema_accuracy"} <= tags
    rows = pd.read_parquet(folders["run-ema1"] / "metrics.parquet").iloc[0]
    assert [e.step for e in board.Scalars("train/loss")] == [3, 6]  # 120 train images in batches of 40, 2 epochs
    assert len(board.Scalars("train/lr")) == len(board.Scalars("train/images_per_second")) == 2
    final = board.Scalars("val/accuracy")[-1]
    assert final.step == 6 and final.value == pytest.approx(rows.val_accuracy)
    assert board.Scalars("val/ema_accuracy")[-1].value == pytest.approx(rows.ema_val_accuracy)


# ---------------------------------------------------------------- parse time
def parsed(soups, runs=(), finetune=None):
    """The default config (config.yaml) with a grid of two runs, these soups, runs and fine-tune settings."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.update(grid={"lr": [0.01, 0.02]}, soups=soups, runs=list(runs))
    config["finetune"] = {**config.get("finetune", {}), **(finetune or {})}
    return resolve_config(config, check_model=False, check_paths=False)


def test_ingredients_ema_without_any_moving_average_is_rejected_naming_the_key():
    with pytest.raises(ConfigError) as info:
        parsed([{"recipe": "greedy"}, {"recipe": "uniform", "ingredients": "ema"}])
    message = str(info.value)
    assert "\n" not in message and "'soups[1].ingredients'" in message and "ema_decay" in message


def test_ingredients_ema_takes_the_runs_that_keep_an_average_and_names_those_left_out(caplog):
    with caplog.at_level("WARNING", logger="soupflow"):
        parsed([{"recipe": "uniform", "ingredients": "ema"}], runs=[{"lr": 0.02, "ema_decay": 0.99}])
    assert "leave out the 2 run(s) without ema_decay: run-" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="soupflow"):
        parsed([{"recipe": "uniform", "ingredients": "ema"}], finetune={"ema_decay": 0.999})
    assert "leave out" not in caplog.text


def test_ema_decay_must_lie_between_zero_and_one():
    for decay in (0, 1, 1.5):
        with pytest.raises(ConfigError, match="ema_decay"):
            parsed([{"recipe": "uniform"}], finetune={"ema_decay": decay})
