"""Issue 33: does the files loader feed the model, and does a 224 px job's memory stay predictable?

    .venv/bin/python studies/loader.py          # or `studies/loader.py memory`: the memory half alone

Prints, in one run: a fine-tune's images/s on 224 px JPEGs streamed by 1, 2 and 4 DataLoader workers
(``training.workers``) against the same training on the same images already in memory as tensors (the
loader's ceiling for that model: a narrow resnet10t, 1 compute thread, CPU), and their ratios; then the peak
memory of one fine-tune job of EfficientNet-Lite0 at 224 px with a 2,000-image val split, with the code before
issue 33 (``git archive dc6aa25 src``: scoring batches of 1,000) and now (``evaluation.batch_size: auto``).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("SOUPFLOW_SRC", str(ROOT / "src")))  # the before arm: HEAD's src

SIZE, BATCH = 224, 32
FAST = {"name": "resnet10t", "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8}}  # ~270 img/s, 1 thread
DATA = {"name": "image_folder", "format": "files", "image_size": SIZE, "pretrain_fraction": 0.0,
        "normalize": "dataset"}
#: the code before issue 33 (scoring batches of 1,000 whatever the images), the memory figure's baseline
BEFORE = os.environ.get("SOUPFLOW_BEFORE", "dc6aa25")
HP = {"epochs": 1, "batch_size": BATCH, "augmentation": "flip", "crop_scale": 0.25, "schedule": "constant"}


def jpegs(work: Path, train: int, test: int) -> Path:
    """Fashion-MNIST images as 224 px JPEGs (made once per run, in the scratch folder)."""
    from soupflow.store.image_folders import export_fashion_mnist

    root = work / f"jpeg{train}"
    if not (root / "test").exists():
        export_fashion_mnist(root, SIZE, train, test)
    return root


def prepared(root: Path, out: Path, val_fraction: float, model: str) -> str:
    from soupflow.store.datasets import prepare

    out.mkdir(exist_ok=True)
    prepare({**DATA, "root": str(root), "val_fraction": val_fraction}, 0, str(out / "files.parquet"),
            str(out / "splits.json"), model)
    return str(out / "files.parquet")


def rate(data_path: str, workers: int | None) -> float:
    """images/s of one epoch of a fine-tune on the train split: files through ``workers`` DataLoader workers,
    or (None) the same images decoded once into tensors in memory, flipped batch-wise."""
    from soupflow.core.models import model_for, set_threads
    from soupflow.core.train import TensorSource, fine_tuning_source, train
    from soupflow.plan.config import merge_defaults
    from soupflow.store.datasets import open_data

    set_threads(1)
    data = open_data(data_path, workers=workers or 0)
    hp = {**merge_defaults({})["finetune"], **HP}
    source = fine_tuning_source(data, hp)
    if workers is None:
        every = torch.arange(data.labels("train").shape[0])
        source = TensorSource.of(data.images("train", every), data.labels("train"), hp)
    torch.manual_seed(0)
    model = model_for(data, FAST)
    return train(model, source, data, hp, torch.device("cpu"), name="bench", log_every=10**6).images_per_second


def child_finetune(data_path: str, out: str, batch: str = "") -> None:
    """One fine-tune job (the workflow's function, 2 threads: 2 workers) of EfficientNet-Lite0, 64 images in
    batches of 16 (at 32 its training alone peaks at 3.4 GB), scored on val and test, with the evaluation settings of the code on ``sys.path`` (or scoring batches of ``batch``)."""
    from soupflow.core.models import model_for, save_checkpoint
    from soupflow.jobs.finetune import RunPaths, RunSpec, finetune
    from soupflow.plan.config import merge_defaults
    from soupflow.plan.layout import run_files
    from soupflow.store.datasets import open_data

    data = open_data(data_path)
    config = merge_defaults({"model": {"name": "efficientnet_lite0"}, "data": DATA,
                             **({"evaluation": {"batch_size": int(batch)}} if batch else {})})
    torch.manual_seed(0)
    save_checkpoint(model_for(data, config["model"]).state_dict(), f"{out}/init.safetensors")
    hp = {**config["finetune"], **HP, "batch_size": 16, "data_fraction": 64 / data.labels("train").shape[0]}
    finetune(config, RunSpec(data_path, f"{out}/init.safetensors", "run-bench", hp),
             RunPaths(**run_files(f"{out}/run")), threads=2)
    import soupflow

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"code: {soupflow.__file__}; evaluation: {config['evaluation']}", file=sys.stderr)
    print(f"peak_rss_mb={peak:.0f}", file=sys.stderr)


def peak_rss(src: Path, data_path: str, out: Path, *args: str) -> tuple[float, float, float]:
    """(seconds, peak RSS MB of the job's own process, peak PSS MB of it and its workers sampled every 50 ms) of
    ``child_finetune`` run with the package at ``src``."""
    from data_path import _tree_rss

    out.mkdir(exist_ok=True)
    env = {**os.environ, "SOUPFLOW_SRC": str(src), "OMP_NUM_THREADS": "2"}
    start, peak = time.perf_counter(), 0
    process = subprocess.Popen([sys.executable, __file__, "finetune", data_path, str(out), *args], env=env,
                               stderr=subprocess.PIPE, text=True)
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.05)
    stderr = process.stderr.read()
    if process.returncode:
        raise RuntimeError(stderr[-3000:])
    print("   ", stderr.strip().splitlines()[-2], flush=True)
    rss = float(stderr.rsplit("peak_rss_mb=", 1)[1].split()[0])  # the job's process: getrusage(RUSAGE_SELF)
    return time.perf_counter() - start, rss, peak / 2**20


def bench_loader(work: Path, rates: bool = True) -> pd.DataFrame:
    return pd.DataFrame((bench_rates(work) if rates else []) + bench_memory(work))


def bench_rates(work: Path) -> list[dict]:
    rows = []
    small = prepared(jpegs(work, 400, 40), work / "small", 0.1, FAST["name"])  # 360 train images
    ceiling = rate(small, None)
    print(f"fine-tune on 224 px JPEGs ({FAST['name']} narrow, batch {BATCH}, RandomResizedCrop + flip, "
          f"1 compute thread): tensors in memory {ceiling:.0f} img/s", flush=True)
    for workers in (1, 2, 4):
        files = rate(small, workers)
        rows.append({"figure": f"files, {workers} workers", "img_s": files, "ceiling_img_s": ceiling,
                     "ratio": files / ceiling})
        print(f"  files, {workers} worker(s): {files:.0f} img/s -> ratio {files / ceiling:.2f}", flush=True)
    return rows


def bench_memory(work: Path) -> list[dict]:
    rows = []
    big = prepared(jpegs(work, 2500, 100), work / "big", 0.8, "efficientnet_lite0")  # val 2,000, test 100
    before = work / "before"
    before.mkdir()
    subprocess.run(f"git -C {ROOT} archive {BEFORE} src | tar -x -C {before}", shell=True, check=True)
    memory = {}
    arms = (("before", before / "src"), ("after", ROOT / "src"), ("after, scoring batches of 1", ROOT / "src", "1"))
    for name, src, *args in arms:  # the last: what training alone (batch 32) costs
        memory[name] = peak_rss(src, big, work / f"run-{name}", *args)
        seconds, rss, pss = memory[name]
        rows.append({"figure": f"lite0 fine-tune job, {name}", "seconds": seconds, "peak_rss_mb": rss,
                     "peak_pss_tree_mb": pss})
        print(f"  EfficientNet-Lite0 fine-tune job at 224 px, 2,000 val images, {name}: peak RSS {rss:.0f} MB "
              f"(job + workers PSS {pss:.0f} MB), {seconds:.0f} s", flush=True)
    print(f"  peak RSS after / before: {memory['after'][1] / memory['before'][1]:.2f} (goal: after < 3 GB)")
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "finetune":
        child_finetune(*sys.argv[2:])
    else:
        with tempfile.TemporaryDirectory(prefix="soupflow-loader-") as scratch:  # "memory": that part alone
            print(bench_loader(Path(scratch), rates=sys.argv[1:] != ["memory"]).to_string())
