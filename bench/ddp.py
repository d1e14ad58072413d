"""One fine-tune on several processes (``training.devices_per_run``): what torch.distributed costs.

    .venv/bin/python bench/run.py --only ddp

Fine-tune images/s (the job's own figure, ``train_images_per_second``) of the same fine-tune — the default's
narrow resnet10t on 20,000 Fashion-MNIST images, batch 128 — in turns: in the job's process (the plain path),
in one process started through torchrun and joined to a torch.distributed group (N = 1: what the launcher
itself costs), and on N = 2 gloo processes sharing the same cores. On CUDA the same on the GPU (bf16).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODEL = {"name": "resnet10t", "kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16}}
THREADS = 2


def _fine_tune(data: str, init: str, folder: Path, devices: int, through_launcher: bool = False) -> float:
    from soupflow.jobs.finetune import RunPaths, RunSpec, finetune
    from soupflow.jobs.launch import Launch, launch
    from soupflow.plan.config import merge_defaults
    from soupflow.plan.layout import run_files

    config = merge_defaults({"model": MODEL, "training": {"devices_per_run": devices, "checkpoint_every_steps": 0}})
    hp = {**config["finetune"], "epochs": 1, "batch_size": 128, "data_fraction": 0.5}
    run, paths = RunSpec(data, init, "run-bench", hp), RunPaths(**run_files(str(folder)))
    if through_launcher:
        launch(Launch(finetune, config, (run, paths), THREADS), folder)
    else:
        finetune(config, run, paths, THREADS)
    return float(pd.read_parquet(paths.metrics).train_images_per_second.iloc[0])


def bench_ddp(work: Path) -> pd.DataFrame:
    from common import prepared_data

    from soupflow.core.models import model_for, save_checkpoint
    from soupflow.store.datasets import open_data

    data = str(prepared_data(work / "ddp", max_train=20000))
    torch.manual_seed(0)
    save_checkpoint(model_for(open_data(data), MODEL).state_dict(), work / "ddp" / "init.safetensors")
    init = str(work / "ddp" / "init.safetensors")
    measures = {"plain": lambda folder: _fine_tune(data, init, folder, 1),
                "torch.distributed, 1 process": lambda folder: _fine_tune(data, init, folder, 1, True),
                "torch.distributed, 2 processes": lambda folder: _fine_tune(data, init, folder, 2)}
    seen = {name: [] for name in measures}
    for repeat in range(3):  # in turns: the machine's drift hits each alike
        for name, measure in measures.items():
            with tempfile.TemporaryDirectory(dir=work) as folder:
                seen[name].append(measure(Path(folder)))
    rates = {name: float(np.median(values)) for name, values in seen.items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\none fine-tune on several processes ({MODEL['name']} narrow, batch 128, {THREADS} threads, {device}; "
          "medians of 3 in turns)")
    for name, rate in rates.items():
        print(f"  {name}: {rate:.0f} img/s -> ratio to the plain path {rate / rates['plain']:.3f}"
              + (" (goal >= 0.95: <= 5 % overhead)" if name.endswith("1 process") else ""))
    return pd.DataFrame([{"path": name, "images_per_second": rate, "ratio_vs_plain": rate / rates["plain"],
                          "device": device} for name, rate in rates.items()])
