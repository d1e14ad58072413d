"""training.devices_per_run: a fine-tune on several processes (torch.distributed, gloo on CPU) trains the weights
one process trains, stops and resumes as one, and its checkpoint is like any other."""

import copy
import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import timm
import torch
from conftest import ROOT, SMOKE, snakemake
from safetensors import safe_open
from safetensors.torch import load_file

from soupflow.core.models import model_for, save_checkpoint
from soupflow.plan.config import merge_defaults
from soupflow.store.datasets import open_data, prepare

pytestmark = pytest.mark.slow  # runs the workflow (or trains) in subprocesses: the slow tier

MODEL = {"name": "test_nfnet"}  # normaliser-free, no BatchNorm: each process's batch statistics do not matter
HP = {"epochs": 2, "batch_size": 16, "lr": 0.01, "augmentation": "none", "schedule": "constant"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data, init) on disk: 300 Fashion-MNIST training images at 16 px and a seeded init of the model."""
    folder = tmp_path_factory.mktemp("ddp")
    prepare({"name": "fashion_mnist", "root": SMOKE["data"]["root"], "image_size": 16, "pretrain_fraction": 0.0,
             "val_fraction": 0.2, "max_train": 300, "max_test": 100}, 0, str(folder / "d.safetensors"),
            str(folder / "s.json"))
    torch.manual_seed(0)
    save_checkpoint(model_for(open_data(str(folder / "d.safetensors")), MODEL).state_dict(), folder / "init.safetensors")
    return folder / "d.safetensors", folder / "init.safetensors"


JOB = """
import sys, json
sys.path.insert(0, {src!r}); sys.path.insert(0, {tests!r})
from conftest import finetune_in
config, hp, paths = json.loads(sys.argv[1])
finetune_in(config, "run-ddp", hp, *paths)
"""


def fine_tune(prepared, folder, devices: int, every: int = 200) -> subprocess.Popen:
    """The fine-tune job's function in a process of its own (as Snakemake runs it), on ``devices`` processes."""
    config = merge_defaults({"model": MODEL, "training": {"devices_per_run": devices, "checkpoint_every_steps": every}})
    hp = {**config["finetune"], **HP}
    code = JOB.format(src=str(ROOT / "src"), tests=str(ROOT / "tests"))
    argument = json.dumps([config, hp, [str(prepared[0]), str(prepared[1]), str(folder)]])
    return subprocess.Popen([sys.executable, "-c", code, argument], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finished(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def two_processes(prepared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    finished(fine_tune(prepared, folder, 2))
    return folder


def test_two_processes_train_the_weights_one_process_trains(prepared, two_processes, tmp_path):
    finished(fine_tune(prepared, tmp_path, 1))
    one, two = load_file(str(tmp_path / "model.safetensors")), load_file(str(two_processes / "model.safetensors"))
    assert one.keys() == two.keys()
    worst = max(float((two[k].double() - one[k].double()).norm() / one[k].double().norm().clamp_min(1e-12))
                for k in one if one[k].is_floating_point())
    print(f"largest relative difference of a tensor: {worst:.2e}")
    assert worst <= 1e-5  # float sums in another order (two half-batch means averaged), nothing else
    assert not torch.equal(one["head.fc.weight"], load_file(str(prepared[1]))["head.fc.weight"])  # it trained
    history = [pd.read_parquet(folder / "history.parquet") for folder in (tmp_path, two_processes)]
    assert history[0].train_loss.tolist() == pytest.approx(history[1].train_loss.tolist(), rel=1e-5)


def test_a_stop_request_stops_both_processes_with_one_state_that_resumes_to_the_same_weights(prepared, two_processes,
                                                                                             tmp_path):
    process = fine_tune(prepared, tmp_path, 2, every=2)
    deadline = time.time() + 300
    while not (tmp_path / "resume.pt").exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # to the job's process, as Snakemake or SLURM sends it
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and "rerun to resume" in stderr, stderr[-2000:]
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "resume.pt").exists()
    finished(fine_tune(prepared, tmp_path, 2, every=2))
    assert pd.read_parquet(tmp_path / "metrics.parquet").resumed_from_step.iloc[0] > 0
    resumed, plain = load_file(str(tmp_path / "model.safetensors")), load_file(str(two_processes / "model.safetensors"))
    assert all(torch.equal(resumed[name], plain[name]) for name in plain)


def test_runs_of_two_processes_load_in_plain_timm_and_soup_with_runs_of_one(tmp_path):
    config = copy.deepcopy(SMOKE)
    config.pop("runs")
    config["grid"] = {"lr": [0.01, 0.03]}
    config["soups"] = [{"recipe": "uniform"}, {"recipe": "greedy"}]
    config["analysis"] = {**config["analysis"], "branching": {"epochs": [], "perturbations": []}}
    # the runs and their table (the soups come once, below, over these runs and one more)
    result = snakemake(tmp_path, config, "results/metrics/runs.parquet", "--config", "training={devices_per_run: 2}")
    assert result.returncode == 0, result.stderr[-4000:]
    runs = pd.read_parquet(tmp_path / "results/metrics/runs.parquet")
    for run_id in runs.run_id:
        assert "on 2 processes" in (tmp_path / "results/runs" / run_id / "train.log").read_text()
    path = tmp_path / "results/runs" / runs.run_id.iloc[0] / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    plain = timm.create_model(meta["model"], num_classes=int(meta["num_classes"]), in_chans=int(meta["in_chans"]))
    plain.load_state_dict(load_file(str(path)))  # strict
    config["grid"]["lr"].append(0.02)  # one more run, on one process; the two-process runs stay
    planned = snakemake(tmp_path, config, "-n")
    assert planned.stdout.count("rule finetune:") == 1, planned.stdout[-2000:]
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-4000:]
    soups = pd.read_parquet(tmp_path / "results/metrics/soups.parquet")
    uniform = soups[soups.soup == "uniform"].iloc[0]
    assert uniform.n_ingredients == 3 and set(runs.run_id) < set(uniform.ingredients)
