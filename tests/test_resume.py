"""A training job killed at a random point resumes from its saved state and ends with exactly the weights
(and the moving average of the weights, ``ema_decay``) of an uninterrupted run (CPU, same seed)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # runs the workflow (or trains) in subprocesses: the slow tier

WORKER = Path(__file__).with_name("resume_worker.py")


def start(state: Path, out: Path, *files: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(state), str(out), *files], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(state: Path, out: Path, *files: str) -> str:
    process = start(state, out, *files)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    return stdout


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, "the job ended before it saved any state"
        assert time.time() < deadline
        time.sleep(0.005)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    stdout = run(folder / "state.pt", folder / "final.safetensors")
    assert "resumed_from_step=0" in stdout
    weights = load_file(str(folder / "final.safetensors"))
    assert any(name.startswith("ema.") for name in weights)  # the moving average (ema_decay) is compared too
    return weights


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("delay", [0.0, 0.4])
def test_kill_9_then_rerun_gives_the_uninterrupted_weights(tmp_path, uninterrupted, delay):
    state, out = tmp_path / "state.pt", tmp_path / "final.safetensors"
    process = start(state, out)
    wait_for(state, process)
    time.sleep(delay)  # somewhere in the middle, possibly during a save
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no truncated temp file left behind
    stdout = run(state, out)
    resumed = int(stdout.split("resumed_from_step=")[1])
    assert 0 < resumed < 80
    assert_same_weights(load_file(str(out)), uninterrupted)


def test_sigterm_saves_state_and_exits_then_resumes(tmp_path, uninterrupted):
    state, out = tmp_path / "state.pt", tmp_path / "final.safetensors"
    process = start(state, out)
    wait_for(state, process)
    saved_before = os.path.getmtime(state)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "Preempted" in stderr and "rerun to resume" in stderr
    assert os.path.getmtime(state) >= saved_before
    run(state, out)
    assert_same_weights(load_file(str(out)), uninterrupted)
