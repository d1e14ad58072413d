"""Nothing lost, nothing stale: stale training states, file modes, orphan temporary files."""

import json
import stat

import pytest
import torch
from conftest import ROOT
from test_train import FakeData, TinyBN

from soupflow.core.resume import Resume
from soupflow.core.train import TensorSource, train
from soupflow.store import io

pytestmark = pytest.mark.slow  # runs the workflow (or trains) in subprocesses: the slow tier


def _train(tmp_path, start: str):
    images = torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(1))
    hp = {"lr": 0.1, "weight_decay": 0.0, "epochs": 2, "batch_size": 16, "optimizer": "sgd", "momentum": 0.9,
          "seed": 0, "schedule": "constant"}
    torch.manual_seed(0)
    return train(TinyBN(), TensorSource.of(images, labels, hp), FakeData(), hp, torch.device("cpu"),
                 resume=Resume(str(tmp_path / "resume.pt"), 0, start))


def test_a_training_state_resumes_only_from_the_start_it_was_saved_for(tmp_path, caplog):
    first = _train(tmp_path, start="init sha A")
    assert first.resumed_from_step == 0 and (tmp_path / "resume.pt").exists()
    assert _train(tmp_path, start="init sha A").resumed_from_step == first.steps  # same start: resumes
    with caplog.at_level("WARNING", logger="soupflow"):
        again = _train(tmp_path, start="init sha B")  # e.g. the init was retrained since
    assert again.resumed_from_step == 0 and again.steps == first.steps
    assert "discarding" in caplog.text and "starting weights" in caplog.text


def test_the_resume_identity_follows_the_start_files_content_and_the_model(tmp_path):
    from soupflow.core.resume import job_resume
    from soupflow.plan.config import merge_defaults

    config = merge_defaults({})
    init = tmp_path / "init.safetensors"
    init.write_bytes(b"weights one")
    one = job_resume(config, tmp_path / "resume.pt", str(init)).start
    init.write_bytes(b"weights two")
    two = job_resume(config, tmp_path / "resume.pt", str(init)).start
    wider = merge_defaults({"model": {"kwargs": {"stem_width": 64}}})
    assert len({one, two, job_resume(wider, tmp_path / "resume.pt", str(init)).start}) == 3
    assert json.loads(two)["start_file_sha256"] == io.file_digest(init) != json.loads(one)["start_file_sha256"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_checkpoints_and_tables_get_the_users_umask(tmp_path, monkeypatch, umask, mode):
    monkeypatch.setattr(io, "_UMASK", umask)
    io.atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    io.atomic_write_text("x", tmp_path / "note.txt")
    for name in ("model.safetensors", "note.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_orphan_temporary_files_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "model.safetensors"
    orphans = [tmp_path / ".model.safetensors.k3j2.tmp", tmp_path / ".model.safetensors.x9.tmp"]
    keep = [tmp_path / "model.safetensors", tmp_path / ".other.safetensors.a.tmp", tmp_path / "model.safetensors.tmp"]
    for path in orphans + keep:
        path.write_bytes(b"partial")
    assert sorted(io.remove_orphan_temps(target)) == sorted(orphans)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in orphans)


def _clone_code(folder):
    """The workflow's code as a `git pull` would leave it: Snakefile, rules, scripts, profiles, src."""
    import shutil

    from conftest import ROOT

    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, folder / name)
    for name in ("workflow", "profiles", "src"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def _planned(code, work, *args):
    import subprocess
    import sys

    from test_workflow import job_counts

    command = [sys.executable, "-m", "snakemake", "-s", str(code / "Snakefile"), "--configfile",
               str(work / "config.yaml"), "--directory", str(work), "--cores", "2", "-n", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return job_counts(result.stdout)


def test_touched_code_retrains_nothing_and_a_training_version_bump_retrains_all(finished, tmp_path):
    from conftest import SMOKE

    from soupflow.plan.config import resolve_config
    from soupflow.plan.grid import expand_runs

    work, _ = finished
    (tmp_path / "checkout").mkdir()
    code = _clone_code(tmp_path / "checkout")
    touched = list((code / "workflow").rglob("*.py")) + list((code / "workflow").rglob("*.smk"))
    for path in touched:  # every script and rule file changes, as in an update
        path.write_text(path.read_text() + "\n# updated\n")
    assert "finetune" not in _planned(code, work)  # through the default workflow profile
    assert _planned(code, work, "--workflow-profile", "none").get("finetune", 0) > 0  # what it prevents
    version = code / "src" / "soupflow" / "plan" / "versions.py"
    version.write_text(version.read_text().replace("TRAINING = 1", "TRAINING = 2"))
    planned = _planned(code, work)
    assert planned["finetune"] == len(expand_runs(resolve_config(SMOKE, check_model=False))) and planned["init"] == 1


def test_a_full_disk_fails_the_job_instead_of_recording_a_failed_run(finished, tmp_path, monkeypatch):
    import errno

    import pandas as pd
    import yaml
    from conftest import SMOKE, finetune_in

    from soupflow.core import train as train_module
    from soupflow.plan.config import resolve_config

    work, _ = finished
    run_dir = sorted((work / "results/runs").iterdir())[0]
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    config, hp = resolve_config(SMOKE, check_model=False), recorded["hyperparameters"]
    data, init = work / "results/data/dataset.safetensors", work / recorded["init"]

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / run_dir.name
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "save_state", no_space)  # the name the loop calls
        with pytest.raises(OSError, match="No space left"):
            finetune_in(config, out.name, hp, data, init, out)
    assert not (out / "metrics.parquet").exists() and not (out / "model.safetensors").exists()
    row = finetune_in(config, out.name, hp, data, init, out)  # space freed: the retry trains
    assert row["status"] == "ok" and pd.read_parquet(out / "metrics.parquet").status.tolist() == ["ok"]


def test_forcing_one_run_retrains_it_alone_and_the_summary_says_how(finished):
    import pandas as pd

    from soupflow.report.summary import format_retry

    work, _ = finished
    runs = pd.read_parquet(work / "results/metrics/runs.parquet")
    target = f"results/runs/{runs.run_id.iloc[0]}/metrics.parquet"
    planned = _planned(ROOT, work, "--forcerun", target)
    assert planned["finetune"] == 1 and planned["soups"] == 1 and "init" not in planned
    failed = runs.assign(status=["failed"] + ["ok"] * (len(runs) - 1))
    assert f"--forcerun {target}" in format_retry(failed) and format_retry(runs) == ""


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, damage):
    from soupflow.core.models import load_checkpoint

    path = tmp_path / "runs" / "run-0123456789" / "model.safetensors"
    io.atomic_save_safetensors({"w": torch.randn(64, 64), "b": torch.zeros(64)}, path, {"model": "x"})
    assert torch.equal(load_checkpoint(path)["b"], torch.zeros(64))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-100] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(io.DamagedFileError, match=f"{path} is damaged .*delete it and rerun snakemake"):
        load_checkpoint(path)


def test_a_damaged_training_state_is_discarded_not_fatal(tmp_path, caplog):
    first = _train(tmp_path, start="A")
    (tmp_path / "resume.pt").write_bytes((tmp_path / "resume.pt").read_bytes()[:100])
    with caplog.at_level("WARNING", logger="soupflow"):
        again = _train(tmp_path, start="A")
    assert again.resumed_from_step == 0 and again.steps == first.steps and "cannot be read" in caplog.text


def test_a_config_yaml_that_is_not_yaml_is_named_with_line_and_column(tmp_path):
    import subprocess
    import sys

    (tmp_path / "checkout").mkdir()
    code = _clone_code(tmp_path / "checkout")
    (code / "config.yaml").write_text("seed: 0\ngrid:\n  lr: [0.1, 0.2\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], cwd=code,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "config.yaml, line 4, column 1: not valid YAML (expected ',' or ']'" in result.stdout + result.stderr


def _long_smoke(work):
    import copy

    from conftest import SMOKE

    config = copy.deepcopy(SMOKE)
    config.update(grid={"lr": [0.01]}, runs=[], soups=[{"recipe": "uniform"}], training={"checkpoint_every_steps": 3})
    config["finetune"]["epochs"] = 40
    return config


def _kill_mid_fine_tune(work, config):
    """Start the workflow, kill -9 Snakemake and its job once a fine-tune has saved a training state."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    (work / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile",
               str(work / "config.yaml"), "--directory", str(work), "--cores", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not list((work / "results" / "runs").glob("*/resume.pt")):
        assert process.poll() is None and time.time() < deadline, "the fine-tune ended before it saved a state"
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A workflow killed with kill -9 (Snakemake and its fine-tune) once the fine-tune saved a training state:
    (folder, config). Each test works on a copy of it, so the data, the init and the first part of the
    fine-tune are made once."""
    work = tmp_path_factory.mktemp("killed")
    config = _long_smoke(work)
    _kill_mid_fine_tune(work, config)
    return work, config


def _copy_of(killed, tmp_path):
    """A copy of the killed workflow in ``tmp_path``, file times kept (Snakemake compares them), and of its
    config (a test may edit it)."""
    import copy
    import shutil

    work, config = killed
    shutil.copytree(work, tmp_path, dirs_exist_ok=True, symlinks=True)
    return copy.deepcopy(config)


def test_a_killed_workflow_goes_on_with_unlock_and_a_plain_rerun(killed, tmp_path):
    """kill -9 of Snakemake and its fine-tune mid-run: `snakemake --unlock`, then the same plain command
    finishes through the default profile, the run resumes from its saved state and its log keeps both parts."""
    from conftest import snakemake

    config = _copy_of(killed, tmp_path)
    assert snakemake(tmp_path, config, "--unlock").returncode == 0
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    log = next((tmp_path / "results" / "runs").glob("*/train.log")).read_text()
    assert "epoch 1/40" in log and "resumes at epoch" in log
    assert log.index("epoch 1/40") < log.index("resumes at epoch")
    assert (tmp_path / "results" / "summary.txt").exists()


def test_a_state_saved_before_the_init_was_retrained_is_not_resumed(killed, tmp_path):
    """The issue's trial: a fine-tune killed mid-run, then pretrain.lr changed: the init is retrained and the
    run starts over from it (one log line says why) instead of resuming the state of the old init. The target
    is the runs table: the soups after it have nothing to do with the resume."""
    from conftest import snakemake

    config = _copy_of(killed, tmp_path)
    config["pretrain"]["lr"] = 0.02
    assert snakemake(tmp_path, config, "--unlock").returncode == 0
    result = snakemake(tmp_path, config, "results/metrics/runs.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    log = next((tmp_path / "results" / "runs").glob("*/train.log")).read_text()
    assert "discarding" in log and "starting weights" in log and "resumes at epoch" not in log
