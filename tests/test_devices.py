import subprocess
import sys
from pathlib import Path

import torch

from soupflow.models import pick_device

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_cpu_when_no_cuda():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"


def test_concurrent_jobs_claim_different_gpus(tmp_path):
    """Three processes on a 3-GPU machine each get a different device (flock per GPU)."""
    code = (f"import sys, time; sys.path.insert(0, {SRC!r}); from soupflow.models import claim_gpu; "
            f"print(claim_gpu(3, {str(tmp_path)!r}), flush=True); time.sleep(1.5)")
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    claimed = sorted(int(p.communicate(timeout=60)[0]) for p in processes)
    assert claimed == [0, 1, 2]
