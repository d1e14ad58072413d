"""bench/gpu_check.sh, the GPU check that waits for a GPU, run shrunk on the CPU (--cpu-dry) so that it cannot
rot: every part runs to ok and leaves its figures, its log and the summary table."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("smoke", "train", "files", "ddp", "soups")


@pytest.mark.slow
def test_cpu_dry_run_of_the_gpu_check(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--cpu-dry"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    status = [line.split("\t") for line in (out / "status.tsv").read_text().splitlines()]
    assert [(part, state) for part, state, _ in status] == [(part, "ok") for part in PARTS]
    table = (out / "summary.txt").read_text()
    assert table.splitlines()[0].split() == ["part", "status", "seconds", "key", "figure"]
    assert table in done.stdout  # printed at the end too
    for part in PARTS:
        figures = json.loads((out / f"{part}.json").read_text())
        assert figures["problems"] == [] and figures["key"] in table
        assert (out / "logs" / f"{part}.log").stat().st_size > 0
    smoke = json.loads((out / "smoke.json").read_text())
    assert {(c["device"], c["precision"]) for c in smoke["checkpoints"].values()} == {("cpu", "bf16")}
    assert smoke["jobs_with_gpu_resource"] >= smoke["runs"]  # each model job asked Snakemake for its GPU
    assert json.loads((out / "ddp.json").read_text())["probe"]["backend"] == "gloo"
    assert set(json.loads((out / "train.json").read_text())["ratio_vs_bare"]) == {"fp32 none", "bf16 none"}


def test_only_and_skip_choose_the_parts(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--cpu-dry", "--only",
                           "smoke,train", "--skip", "smoke,train"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {line.split("\t")[1] for line in (out / "status.tsv").read_text().splitlines()} == {"skipped"}
    bad = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--only", "gazpacho"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown part gazpacho" in bad.stderr
