import subprocess
import sys
from pathlib import Path

import pytest
import torch

from soupflow.core.models import pick_device

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_cpu_when_no_cuda():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"


def test_concurrent_jobs_claim_different_gpus(tmp_path):
    """Three processes on a 3-GPU machine each get a different device (flock per GPU)."""
    code = (f"import sys, time; sys.path.insert(0, {SRC!r}); from soupflow.plan.gpus import claim_gpu; "
            f"print(claim_gpu(3, {str(tmp_path)!r}), flush=True); time.sleep(1.5)")
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    claimed = sorted(int(p.communicate(timeout=60)[0]) for p in processes)
    assert claimed == [0, 1, 2]


def test_visible_gpus_reads_cuda_visible_devices_before_device_files(tmp_path):
    from soupflow.plan.gpus import visible_gpus

    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidia1").touch()
    (tmp_path / "nvidiactl").touch()  # the control device is not a GPU
    files = str(tmp_path / "nvidia[0-9]*")
    assert visible_gpus({}, files) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3"}, files) == 1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0, 1,2"}, files) == 3
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, files) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, files) == 0


def _most_at_once(output: str, rule: str) -> int:
    """The most jobs of ``rule`` running at the same time, from Snakemake's job start / finish lines."""
    running, most, current_rule = set(), 0, None
    for line in output.splitlines():
        if line.startswith(("rule ", "localrule ")):
            current_rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("jobid:") and current_rule == rule:
            running.add(line.split()[1])
            most = max(most, len(running))
        elif line.startswith("Finished jobid:"):
            running.discard(line.split()[2])
    return most


@pytest.mark.slow
def test_plain_cores_n_runs_one_gpu_job_per_visible_gpu(tmp_path):
    """With one visible GPU and `--cores 4` (no --resources, no profile), fine-tunes run one at a time; with
    none they run side by side. (No GPU here: torch finds no CUDA and the jobs train on the CPU.)"""
    import os
    import shutil

    from conftest import SMOKE, snakemake

    config = {**SMOKE, "grid": {"lr": [0.01, 0.02, 0.03, 0.04]}, "runs": []}
    outputs = {}
    for gpus in ("0", ""):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus}
        work = tmp_path / f"gpus{gpus or 'none'}"
        if gpus == "":  # the first workflow's data and init, file times kept: only the fine-tunes run again
            shutil.copytree(tmp_path / "gpus0", work, ignore=shutil.ignore_patterns("runs"), symlinks=True)
        else:
            work.mkdir()
        result = snakemake(work, config, "--until", "finetune", env=env,
                           cores=("--cores", "4"))
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[gpus] = result.stdout + result.stderr
    assert "Provided resources: gpu" in outputs["0"]
    assert _most_at_once(outputs["0"], "finetune") == 1
    assert _most_at_once(outputs[""], "finetune") > 1
