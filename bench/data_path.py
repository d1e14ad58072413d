"""The files data path at the users' scale: folders of 224 px JPEGs streamed through DataLoader workers.

    .venv/bin/python bench/run.py --only data          # 2,000 vs 20,000 JPEGs; or this file directly

Prints, side by side in one run: the peak memory (the job's processes together: main and DataLoader workers)
of prepare_data and of one fine-tune job on 2,000 vs 20,000 JPEGs, and their ratio; images/s of soupflow's
loader against timm's ``create_loader`` on the same folder and transforms (no model), and of a whole
fine-tune step against a timm-train.py-style loop (same model, batch, transforms), measured in turns; the
seconds prepare_data takes to list 20,000 files; and what adding one image makes Snakemake plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODEL = {"name": "resnet10t", "kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16}}  # the default's model
POLICY = {"augmentation": "flip", "crop_scale": 0.25, "auto_augment": "rand-m9-mstd0.5-inc1"}
SIZE, BATCH, WORKERS = 224, 32, 2
DATA = {"name": "image_folder", "format": "files", "image_size": SIZE, "pretrain_fraction": 0.0,
        "val_fraction": 0.1, "normalize": "pretrained"}


def image_folder(work: Path, count: int) -> Path:
    """``count`` Fashion-MNIST training images (and a tenth as many test images) as 224 px JPEGs, made once."""
    from soupflow.store.image_folders import export_fashion_mnist

    root = work / f"jpeg{count}"
    if not (root / "test").exists():
        export_fashion_mnist(root, SIZE, count, count // 10)
    return root


def _tree_rss(pid: int) -> int:
    """Proportional resident bytes (PSS: a page shared by k processes counts 1/k in each) of a process and all
    its descendants (its DataLoader workers, forked: their copy-on-write pages are shared, not theirs)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as handle:
                total += next(int(line.split()[1]) * 1024 for line in handle if line.startswith("Pss:"))
            with open(f"/proc/{current}/task/{current}/children") as handle:
                pending += [int(child) for child in handle.read().split()]
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            continue
    return total


def peak_memory(*args: str) -> tuple[float, float]:
    """(seconds, peak PSS in MB of the whole process tree) of ``python bench/data_path.py ARGS``, sampled every
    20 ms."""
    start, peak = time.perf_counter(), 0
    process = subprocess.Popen([sys.executable, __file__, *args], stderr=subprocess.PIPE, text=True)
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.02)
    if process.returncode:
        raise RuntimeError(process.stderr.read()[-3000:])
    return time.perf_counter() - start, peak / 2**20


def child_prepare(root: str, out: str) -> None:
    from soupflow.store.datasets import prepare

    prepare({**DATA, "root": root}, 0, f"{out}/files.parquet", f"{out}/splits.json", MODEL["name"])


def child_finetune(data_path: str, out: str) -> None:
    """One fine-tune job (the workflow's function, 2 threads and workers) on the same number of training images
    whatever the folder's size (its data_fraction), scored on its whole val and test splits."""
    from soupflow.core.models import model_for, save_checkpoint
    from soupflow.jobs.finetune import RunPaths, RunSpec, finetune
    from soupflow.plan.config import merge_defaults
    from soupflow.plan.layout import run_files
    from soupflow.store.datasets import open_data

    data = open_data(data_path)
    config = merge_defaults({"model": MODEL, "data": DATA, "evaluation": {"batch_size": BATCH}})
    torch.manual_seed(0)
    save_checkpoint(model_for(data, MODEL).state_dict(), f"{out}/init.safetensors")
    share = 512 / data.labels("train").shape[0]
    hp = {**config["finetune"], **POLICY, "epochs": 1, "batch_size": BATCH, "data_fraction": share}
    finetune(config, RunSpec(data_path, f"{out}/init.safetensors", "run-bench", hp),
             RunPaths(**run_files(f"{out}/run")), threads=WORKERS)


def soupflow_loader(data_path: str, batches: int, model=None) -> float:
    """Images/s of soupflow's training batches (with a training step when ``model`` is given)."""
    from soupflow.core.train import TrainResult, fine_tuning_source, train
    from soupflow.store.datasets import open_data

    data = open_data(data_path, workers=WORKERS)
    hp = {"lr": 0.01, "weight_decay": 1e-4, "epochs": 1, "batch_size": BATCH, "optimizer": "sgd", "momentum": 0.9,
          "nesterov": True, "schedule": "constant", "seed": 0, **POLICY,
          "data_fraction": BATCH * batches / data.labels("train").shape[0]}
    source = fine_tuning_source(data, hp)
    if model is not None:
        result: TrainResult = train(model, source, data, hp, torch.device("cpu"), name="bench", log_every=10**6)
        return result.images_per_second
    start, images = time.perf_counter(), 0
    order = torch.randperm(source.size, generator=torch.Generator().manual_seed(0))
    for batch, _ in source.epoch(order, 0, BATCH, 0, torch.device("cpu")):
        data.normalise(batch)
        images += batch.shape[0]
    return images / (time.perf_counter() - start)


def timm_loader(root: Path, batches: int, interpolation: str):
    """timm's own loader on the same folder and transforms (train.py's: create_dataset + create_loader)."""
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(root / "train"))
    loader = create_loader(dataset, input_size=(3, SIZE, SIZE), batch_size=BATCH, is_training=True,
                           interpolation=interpolation,
                           use_prefetcher=True, device=torch.device("cpu"), scale=(POLICY["crop_scale"], 1.0),
                           hflip=0.5, color_jitter=None, auto_augment=POLICY["auto_augment"], num_workers=WORKERS,
                           mean=(0.5,) * 3, std=(0.5,) * 3, persistent_workers=False)
    return loader, batches


def timm_rate(root: Path, batches: int, model=None) -> float:
    """Images/s of timm's loader, with a train.py-style step (SGD, cross-entropy) when ``model`` is given; the
    interpolation of soupflow's (the model's pretrained_cfg)."""
    from timm.models import get_pretrained_cfg

    loader, _ = timm_loader(root, batches, get_pretrained_cfg(MODEL["name"]).interpolation)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True) if model else None
    if model is not None:
        model = model.to(memory_format=torch.channels_last).train()
    batches_of = iter(loader)  # forks the workers, as soupflow's FileData.open does before its clock starts
    start, images = time.perf_counter(), 0
    for index, (x, y) in enumerate(batches_of):
        if index == batches:
            break
        if model is not None:
            loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        images += y.shape[0]
    return images / (time.perf_counter() - start)


def in_turns(first, second, repeats: int = 3) -> tuple[float, float]:
    """Medians of two measures taken in turns, so that the machine's drift hits both alike."""
    pairs = [(first(), second()) for _ in range(repeats)]
    return float(np.median([a for a, _ in pairs])), float(np.median([b for _, b in pairs]))


def fresh_model(data_path: str):
    from soupflow.core.models import model_for
    from soupflow.store.datasets import open_data

    torch.manual_seed(0)
    return model_for(open_data(data_path), MODEL)


def replanned(work: Path, root: Path) -> dict[str, int]:
    """What ``snakemake -n`` plans for a finished files workflow once an image is added to its folder."""
    from dag import _config, _job_count, _snakemake, touch_finished

    folder = work / "replan"
    config = {**_config(20), "data": {**DATA, "root": str(root), "pretrain_fraction": 0.5}, "model": MODEL}
    config["pretrain"] = {"epochs": 1, "augmentation": "flip"}
    for split in ("train", "test"):  # the folder is older than the results pretended next
        for classes in (root / split).iterdir():
            os.utime(classes, (time.time() - 5000, time.time() - 5000))
    touch_finished(folder, config)
    _, before = _snakemake(folder, config, "-n", "--quiet", "rules")
    added = next((root / "train").iterdir()) / "0000000-added.jpg"
    added.write_bytes(next(added.parent.glob("*.jpg")).read_bytes())
    try:
        _, after = _snakemake(folder, config, "-n", "--quiet", "rules")
    finally:
        added.unlink()
    return {"before": _job_count(before, "finetune"), "prepare_data": _job_count(after, "prepare_data"),
            "finetune": _job_count(after, "finetune"), "soup": _job_count(after, "soup"), "runs": 20}


def bench_data(work: Path) -> pd.DataFrame:
    torch.set_num_threads(WORKERS)
    rows, prepared = [], {}
    for count in (2000, 20000):
        root = image_folder(work, count)
        out = work / f"prepared{count}"
        out.mkdir(exist_ok=True)
        seconds, prepare_mb = peak_memory("prepare", str(root), str(out))
        prepared[count] = str(out / "files.parquet")
        finetune_seconds, finetune_mb = peak_memory("finetune", prepared[count], str(out))
        rows.append({"images": count, "prepare_seconds": seconds, "prepare_peak_mb": prepare_mb,
                     "finetune_seconds": finetune_seconds, "finetune_peak_mb": finetune_mb})
        print(f"  {count} JPEGs: prepare_data {prepare_mb:.0f} MB in {seconds:.1f} s, fine-tune job "
              f"{finetune_mb:.0f} MB in {finetune_seconds:.1f} s", flush=True)
    small, large = rows
    root, data_path = image_folder(work, 20000), prepared[20000]
    loader = in_turns(lambda: soupflow_loader(data_path, 40), lambda: timm_rate(root, 40))
    step = in_turns(lambda: soupflow_loader(data_path, 20, fresh_model(data_path)),
                    lambda: timm_rate(root, 20, fresh_model(data_path)))
    plan = replanned(work, image_folder(work, 2000))
    table = pd.DataFrame(rows)
    table["loader_img_s"], table["timm_loader_img_s"] = loader
    table["finetune_img_s"], table["timm_loop_img_s"] = step
    table["replan"] = json.dumps(plan)
    print(f"\nfiles data path ({SIZE} px JPEGs, {WORKERS} workers, batch {BATCH}, {MODEL['name']} narrow, "
          f"{POLICY})")
    for name in ("prepare", "finetune"):
        print(f"  {name} peak memory (job + workers): {small[f'{name}_peak_mb']:.0f} MB on 2,000 vs "
              f"{large[f'{name}_peak_mb']:.0f} MB on 20,000 JPEGs -> ratio "
              f"{large[f'{name}_peak_mb'] / small[f'{name}_peak_mb']:.2f} (goal <= 1.15); "
              f"{small[f'{name}_seconds']:.1f} s vs {large[f'{name}_seconds']:.1f} s")
    print(f"  loader alone: soupflow {loader[0]:.0f} img/s vs timm create_loader {loader[1]:.0f} -> ratio "
          f"{loader[0] / loader[1]:.2f} (goal >= 0.95)")
    print(f"  fine-tune steps: soupflow {step[0]:.0f} img/s vs timm-train.py-style loop {step[1]:.0f} -> ratio "
          f"{step[0] / step[1]:.2f} (goal >= 0.95)")
    print(f"  prepare_data lists 20,000 files in {large['prepare_seconds']:.1f} s (a process: imports included)")
    print(f"  one image added to a finished {plan['runs']}-run workflow's folder: snakemake -n plans "
          f"prepare_data {plan['prepare_data']}, finetune {plan['finetune']}, soup {plan['soup']} "
          f"(before: {plan['before']} fine-tunes)")
    return table


if __name__ == "__main__":
    {"prepare": child_prepare, "finetune": child_finetune}[sys.argv[1]](*sys.argv[2:])
