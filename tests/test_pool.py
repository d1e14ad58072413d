"""Outside checkpoints (config section ``pool``): which files a config names, the checks before any job, and
(slow tier) a soup-only workflow over three checkpoints of a folder, and a pool added to a finished grid."""

import copy
import re

import pytest
import torch
from conftest import SMOKE, snakemake

from soupflow.plan.catalog import RECIPES
from soupflow.plan.config import resolve_config
from soupflow.plan.errors import ConfigError
from soupflow.plan.pool import check_pool_files, pool_checkpoints

#: a soup-only config: data to score on, the model the checkpoints are of, no grid
DATA = {"name": "fashion_mnist", "root": "/usr/share/datasets/fashion-mnist", "val_fraction": 0.3, "max_train": 400,
        "max_test": 200}


def _state(seed: int, start: dict | None = None) -> dict[str, torch.Tensor]:
    """test_resnet for 1-channel, 10-class images: seeded; with ``start``, a small seeded move away from it
    (a stand-in for a fine-tune of it; BatchNorm counters kept)."""
    import timm

    torch.manual_seed(seed)
    state = timm.create_model("test_resnet", num_classes=10, in_chans=1).state_dict()
    if start is None:
        return state
    return {name: start[name] + 0.02 * torch.randn_like(start[name]) if start[name].is_floating_point()
            else start[name] for name in start}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of three fine-tunes of one start (two .safetensors, one torch.save file), the start apart, and
    one checkpoint of another architecture."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("pool")
    start = _state(0)
    (root / "pool").mkdir()
    save_file(start, root / "start.safetensors")
    save_file(_state(0, start), root / "pool" / "alpha.safetensors")
    save_file(_state(1, start), root / "pool" / "beta.safetensors")
    torch.save({"state_dict": _state(2, start)}, root / "pool" / "gamma.pth")
    save_file(timm.create_model("resnet10t", num_classes=10, in_chans=1).state_dict(), root / "other.safetensors")
    return root


def _config(root, **pool) -> dict:
    return {"data": DATA, "model": {"name": "test_resnet"}, "soups": [{"recipe": "uniform"}],
            "pool": {"checkpoints": [f"{root}/pool/*"], **pool}}


def test_a_glob_names_each_file_once_with_a_readable_id_and_local_dir_folders_count(folder, tmp_path):
    from safetensors.torch import save_file

    local = tmp_path / "ft7"
    local.mkdir()
    save_file(_state(3), local / "model.safetensors")
    config = resolve_config(_config(folder) | {"pool": {"checkpoints": [f"{folder}/pool/*", f"{folder}/pool/beta.safetensors",
                                                                        f"local-dir:{local}"], "start": None}},
                            check_model=False)
    pool = pool_checkpoints(config)
    assert list(pool) == ["pool-alpha", "pool-beta", "pool-gamma", "pool-ft7"]
    assert pool["pool-gamma"].file.endswith("gamma.pth") and pool["pool-ft7"].file == str(local / "model.safetensors")


@pytest.mark.parametrize("change, key", [
    (lambda c, root: c["pool"].update(checkpoints=[f"{root}/nothing/*.pt"]), "pool.checkpoints[0]"),
    (lambda c, root: c["pool"]["checkpoints"].append(f"{root}/missing.safetensors"), "pool.checkpoints[1]"),
    (lambda c, root: c["pool"]["checkpoints"].append(f"{root}/other.safetensors"), "pool.checkpoints[1]"),
    (lambda c, root: c["pool"].update(start=f"{root}/other.safetensors"), "pool.start"),
    (lambda c, root: c.update(soups=[{"recipe": "ties"}]), "soups[0].recipe"),
    (lambda c, root: c.update(soups=[{"recipe": "uniform", "ingredients": "epochs"}]), "soups[0].ingredients"),
    (lambda c, root: c.update(soups=[{"recipe": "dare", "drop": 1.5}]), "soups[0].drop"),
    (lambda c, root: c.update(soups=[{"recipe": "ties", "scales": [-1]}]), "soups[0].scales[0]"),
])
def test_bad_pool_input_is_rejected_before_any_job_naming_the_key(folder, tmp_path, monkeypatch, change, key):
    """A glob matching nothing, a missing file, a checkpoint of another architecture (as a pool file or as the
    start), a recipe that needs θ0 in a soup-only config without pool.start, epoch ingredients the pool lacks, a
    task-vector option out of range: each stops the config naming the key."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the architecture verdict is computed, not cached
    config = copy.deepcopy(_config(folder))
    change(config, folder)
    with pytest.raises(ConfigError, match=f"config key '{re.escape(key)}'"):
        resolve_config(config)


def test_files_of_the_model_pass_and_the_verdict_is_cached(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    config = resolve_config(_config(folder, start=str(folder / "start.safetensors")))  # no error
    cached = sorted((tmp_path / "soupflow").glob("pool-*.txt"))
    assert len(cached) == 4 and all(path.read_text() == "ok" for path in cached)
    check_pool_files(config, pool_checkpoints(config), check_model=True)  # from the cache: same verdicts
    assert sorted((tmp_path / "soupflow").glob("pool-*.txt")) == cached


@pytest.mark.slow
def test_a_soup_only_config_over_a_folder_runs_from_nothing_and_yields_every_recipe(folder, tmp_path):
    """No grid: three outside checkpoints are scored, souped with every recipe of the catalog (θ0 =
    pool.start) and compared with the best of them; nothing is pretrained or fine-tuned."""
    import pandas as pd

    soups = [{"recipe": name} for name in RECIPES] + [{"name": "ties_bn", "recipe": "ties", "bn": "recompute"}]
    config = _config(folder, start=str(folder / "start.safetensors")) | {"soups": soups}
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "rule init" not in result.stderr and "rule finetune" not in result.stderr
    runs = pd.read_parquet(tmp_path / "results/metrics/runs.parquet")
    assert sorted(runs.run_id) == ["pool-alpha", "pool-beta", "pool-gamma"] and (runs.status == "ok").all()
    assert runs.source.str.endswith((".safetensors", ".pth")).all() and runs.hp_lr.isna().all()
    table = pd.read_parquet(tmp_path / "results/metrics/soups.parquet")
    assert set(RECIPES) | {"ties_bn"} <= set(table.soup)
    uniform = table[table.soup == "uniform"].iloc[0]
    assert uniform.n_ingredients == 3 and "acc_diff_pt_low" in table
    from safetensors.torch import load_file

    made = load_file(tmp_path / "results/soups/uniform/model.safetensors")
    members = [load_file(tmp_path / f"results/pool/{run}/model.safetensors") for run in runs.run_id]
    for name, tensor in made.items():  # the exact mean, BatchNorm statistics included
        if tensor.is_floating_point():
            assert torch.allclose(tensor, sum(m[name] for m in members) / 3, atol=1e-6), name
    assert (tmp_path / "results/pool/pool-gamma/config.json").exists()  # plain timm loads the rewritten .pth


@pytest.mark.slow
def test_adding_a_pool_to_a_finished_grid_plans_its_scoring_and_the_soups_not_the_grid(finished, folder):
    """Outside checkpoints of the smoke workflow's model beside its grid: each file is one scoring job, then the
    runs table and the soups again; no pretraining or fine-tune reruns."""
    work, _ = finished
    config = copy.deepcopy(SMOKE)
    config["pool"] = {"checkpoints": [f"{folder}/pool/alpha.safetensors", f"{folder}/pool/gamma.pth"]}
    result = snakemake(work, config, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (result.stdout + result.stderr).split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}
    assert jobs["pool_checkpoint"] == 2 and jobs["run_table"] == 1 and jobs["soups"] == 1
    assert not {"finetune", "init", "prepare_data"} & set(jobs), jobs
