"""soupflow's benchmark: prints each speed/memory figure next to its baseline and ratio, and writes them to
results/bench/<section>.parquet.

    .venv/bin/python bench/run.py            # soups, train, dag (about 20 minutes on 2 CPU cores; dag ~12)
    .venv/bin/python bench/run.py --only dag # one section: soups | train | dag | selection | data
    .venv/bin/python bench/run.py --only train --device cuda --precisions fp32,bf16   # options of train
    .venv/bin/python bench/run.py --only data   # the files data path on 2,000 vs 20,000 224 px JPEGs
    .venv/bin/python bench/run.py --only ddp    # a fine-tune on 1 and 2 processes through torch.distributed
    .venv/bin/python bench/run.py --only selection --results results   # after `snakemake --cores 2`

Ratios are taken side by side in one run on one machine, against a baseline this checkout runs itself;
nothing here is a pass/fail test. Studies (calibrating the default, comparisons with an earlier commit's
code) are in ``studies/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import common  # noqa: E402  (bench/ is on sys.path: this file's folder)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from common import prepared_data  # noqa: E402
from dag import bench_dag  # noqa: E402
from data_path import bench_data  # noqa: E402
from ddp import bench_ddp  # noqa: E402

DEFAULT_MODEL = {"name": "resnet10t", "kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16}}
FULL_MODEL = {"name": "resnet10t", "kwargs": {}}  # 5.4M parameters: state dicts that dominate memory


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {device}"


# ------------------------------------------------------------------ soups: memory and cost
def _greedy_child(args: argparse.Namespace) -> None:
    """Run in a fresh process: greedy soup over k checkpoints on disk; print peak RSS and timings as JSON."""
    from safetensors.torch import load_file

    from soupflow.core.evaluate import Evaluator, Scores
    from soupflow.core.models import model_for, set_threads
    from soupflow.core.recipes import Ingredient, Kitchen, greedy_pass
    from soupflow.store.data import TensorData

    set_threads(2)
    folder = Path(args.folder)
    data = TensorData(prepared_data(folder))
    model_config = json.loads(args.model)
    evaluator = Evaluator(model_for(data, model_config), data, "val", torch.device("cpu"), 1000)
    paths = sorted(folder.glob("ckpt_*.safetensors"))[: args.k]
    ingredients = [Ingredient(p.stem, Scores(0.0, 1.0 - i / 1000), (lambda p=p: load_file(str(p)))) for i, p in enumerate(paths)]
    first = load_file(str(paths[0]))
    evaluator.scores(first)  # warm-up

    def timed_passes():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            evaluator.scores(first)
            times.append(time.perf_counter() - start)
        return times

    before = timed_passes()
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    soup = greedy_pass(Kitchen(ingredients, evaluator.scores), ingredients, "accuracy", {})
    seconds = time.perf_counter() - start
    one_pass = float(np.median(before + timed_passes()))  # passes before and after the soup: the VM drifts
    print(json.dumps({"k": args.k, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_soup_mb": baseline_rss / 1024, "greedy_seconds": seconds,
                      "one_val_pass_seconds": one_pass, "passes": soup.selection_passes}))


def bench_soups(work: Path) -> pd.DataFrame:
    from soupflow.core.models import model_for
    from soupflow.store.data import TensorData
    from soupflow.store.io import atomic_save_safetensors

    folder = work / "soups"
    folder.mkdir(parents=True, exist_ok=True)
    # val: 1000 images (the default experiment validates on 5000)
    data = TensorData(prepared_data(folder, max_train=10000))
    base = model_for(data, FULL_MODEL).state_dict()
    for i in range(64):
        path = folder / f"ckpt_{i:03d}.safetensors"
        if not path.exists():
            generator = torch.Generator().manual_seed(i)
            atomic_save_safetensors({k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                                     for k, v in base.items()}, path)
    size_mb = sum(v.numel() * v.element_size() for v in base.values()) / 2**20
    rows = []
    for k in (4, 64):
        out = subprocess.run([sys.executable, __file__, "--greedy-child", "--folder", str(folder), "--k", str(k),
                              "--model", json.dumps(FULL_MODEL)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]) | {"checkpoint_mb": size_mb})
    table = pd.DataFrame(rows)
    table["cost_ratio"] = table.greedy_seconds / (table.k * table.one_val_pass_seconds)
    small, large = table.set_index("k").loc[4], table.set_index("k").loc[64]
    print(f"\nsoups (full resnet10t, {size_mb:.1f} MB per checkpoint; 64 in memory would be {64 * size_mb:.0f} MB)")
    print(f"  peak RSS greedy k=64: {large.peak_rss_mb:.0f} MB vs k=4: {small.peak_rss_mb:.0f} MB "
          f"-> ratio {large.peak_rss_mb / small.peak_rss_mb:.3f} (goal <= 1.2)")
    for row in table.itertuples():
        print(f"  greedy k={row.k}: {row.greedy_seconds:.2f} s vs k x one val pass {row.k * row.one_val_pass_seconds:.2f} s "
              f"-> ratio {row.cost_ratio:.3f} (goal <= 1.1)")
    table["rss_ratio_64_vs_4"] = large.peak_rss_mb / small.peak_rss_mb
    return table


# ------------------------------------------------------------------ training throughput
def _bare_loop(model, images, labels, data, batch_size, steps, device, channels_last=False, bf16=False,
               augment=None):
    """The reference: a plain PyTorch loop over pre-loaded tensors (no schedule, no bookkeeping); ``augment``
    is the same batch augmentation soupflow applies, so that each setting has its own reference."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model.train()
    n = labels.shape[0]
    order = torch.randperm(n, device=device)
    generator = torch.Generator().manual_seed(0)
    done = 0
    start = time.perf_counter()
    for step in range(steps):
        index = order[(step * batch_size) % (n - batch_size):][:batch_size]
        batch = images[index] if augment is None else augment(images[index], generator)
        x = data.normalise(batch)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += index.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def _per_sample_loader(images, labels, data, batch_size, augment: bool):
    """The baseline users write: a per-sample Dataset (PIL + torchvision transforms) in a DataLoader, with the
    same flip + shift augmentation as soupflow's ``flip_shift`` when ``augment``."""
    from PIL import Image
    from torchvision import transforms

    mean, std = data.mean.flatten().tolist(), data.std.flatten().tolist()
    pad = max(1, images.shape[-1] // 8)  # as train.random_shift
    steps = [transforms.RandomHorizontalFlip(), transforms.RandomCrop(images.shape[-1], padding=pad)] if augment else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])
    cpu_images, cpu_labels = images.cpu(), labels.cpu()

    class PerSample(torch.utils.data.Dataset):
        def __len__(self):
            return cpu_labels.shape[0]

        def __getitem__(self, i):
            return transform(Image.fromarray(cpu_images[i, 0].numpy(), mode="L")), int(cpu_labels[i])

    return torch.utils.data.DataLoader(PerSample(), batch_size=batch_size, shuffle=True, drop_last=True)


def _dataloader_loop(model, images, labels, data, batch_size, steps, device, augment=False):
    """Images/s of a training loop over the per-sample DataLoader (``model=None``: the data path alone)."""
    loader = _per_sample_loader(images, labels, data, batch_size, augment)
    if model is not None:
        model = model.to(memory_format=torch.channels_last)  # the same layout as soupflow: compare data paths
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
        model.train()
    done, start = 0, time.perf_counter()
    while done < steps * batch_size:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            if model is not None:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            done += y.numel()
            if done >= steps * batch_size:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def _batch_data_path(images, data, batch_size, steps, device):
    """Images/s of soupflow's data path alone: slice a batch, flip + shift it as a whole, normalise."""
    from soupflow.core.train import AUGMENTATIONS

    generator = torch.Generator().manual_seed(0)
    augment, n = AUGMENTATIONS["flip_shift"], images.shape[0]
    order = torch.randperm(n, device=device)
    start = time.perf_counter()
    for step in range(steps):
        index = order[(step * batch_size) % (n - batch_size):][:batch_size]
        data.normalise(augment(images[index], generator))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def bench_train(work: Path, steps: int, device: str = "auto", precisions: list[str] | None = None,
                augmentations: list[str] | None = None, repeats: int = 5) -> pd.DataFrame:
    """soupflow's ``train()`` vs a bare loop (and a per-sample DataLoader) on ``device``; ``precisions`` default
    to fp32, and bf16 on CUDA; ``augmentations`` to all of ``AUGMENTATIONS``; medians of ``repeats`` in turns."""
    from soupflow.core.models import model_for, pick_device, set_threads
    from soupflow.core.train import AUGMENTATIONS, TensorSource, TrainingOptions, train
    from soupflow.store.data import TensorData

    set_threads(os.cpu_count())
    folder = work / "train"
    folder.mkdir(parents=True, exist_ok=True)
    data = TensorData(prepared_data(folder, max_train=20000))
    device = pick_device(device)
    images, labels = data.split("train", device)
    batch = 128
    n = steps * batch
    hp = {"lr": 0.01, "weight_decay": 1e-4, "epochs": 1, "batch_size": batch, "label_smoothing": 0.0,
          "augmentation": "none", "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "schedule": "onecycle",
          "warmup_fraction": 0.3, "seed": 0}

    def fresh():
        torch.manual_seed(0)
        return model_for(data, DEFAULT_MODEL).to(device)

    def median(measure, repeats=min(3, repeats)):
        """Median images/s of a few repeats (a 2-core VM drifts by ±10 % from one run to the next)."""
        return float(np.median([measure() for _ in range(repeats)]))

    def interleaved(first, second, repeats=repeats):
        """Medians of two measures taken in turns, so that the VM's drift hits both alike."""
        pairs = [(first(), second()) for _ in range(repeats)]
        return float(np.median([a for a, _ in pairs])), float(np.median([b for _, b in pairs]))

    def soupflow(augmentation="none", precision="fp32"):
        settings = hp | {"augmentation": augmentation}
        return lambda: train(fresh(), TensorSource.of(images[:n], labels[:n], settings), data, settings, device,
                             name="bench", options=TrainingOptions(precision=precision)).images_per_second

    _bare_loop(fresh(), images, labels, data, batch, 5, device)  # warm-up (allocator, kernels)
    soupflow()()
    rows = []
    for precision in precisions or ["fp32"] + (["bf16"] if device.type == "cuda" else []):
        bf16 = precision == "bf16"
        for augmentation in augmentations or AUGMENTATIONS:

            def bare(layout=True, augmentation=augmentation):
                model = fresh().to(memory_format=torch.channels_last) if layout else fresh()
                return _bare_loop(model, images, labels, data, batch, steps, device, channels_last=layout, bf16=bf16,
                                  augment=None if augmentation == "none" else AUGMENTATIONS[augmentation])

            ours, reference = interleaved(soupflow(augmentation, precision), bare)
            rows.append({"device": device.type, "precision": precision, "augmentation": augmentation,
                         "soupflow_img_s": ours, "bare_loop_img_s": reference,
                         "bare_loop_nchw_img_s": median(lambda: bare(layout=False)) if augmentation == "none"
                         else float("nan")})
    loaders = {augment: median(lambda: _dataloader_loop(fresh(), images, labels, data, batch, steps, device,
                                                        augment=augment)) for augment in (False, True)}
    for row in rows:  # the per-sample DataLoader knows none and flip + shift
        row["dataloader_img_s"] = loaders[row["augmentation"] != "none"]
    # The data path alone (no model): what the DataLoader costs per image, and what slicing batches costs.
    rows.append({"device": device.type, "precision": "data path only", "augmentation": "flip_shift",
                 "soupflow_img_s": median(lambda: _batch_data_path(images, data, batch, steps, device)),
                 "bare_loop_img_s": float("nan"),
                 "dataloader_img_s": median(lambda: _dataloader_loop(None, images, labels, data, batch, steps, device,
                                                                     augment=True))})
    for row in rows:
        row["ratio_vs_bare"] = row["soupflow_img_s"] / row["bare_loop_img_s"]
        row["ratio_vs_dataloader"] = row["soupflow_img_s"] / row["dataloader_img_s"]
    table = pd.DataFrame(rows)
    print(f"\nfine-tune throughput ({DEFAULT_MODEL['name']} narrow, batch {batch}, {steps} steps, {device})")
    for row in table.itertuples():
        nchw = row.bare_loop_nchw_img_s
        layout = f"; bare loop in the default NCHW layout: {nchw:.0f}" if nchw == nchw else ""
        bare = (f" vs bare loop {row.bare_loop_img_s:.0f} -> ratio {row.ratio_vs_bare:.3f} (goal >= 0.95{layout});"
                if row.bare_loop_img_s == row.bare_loop_img_s else "")
        print(f"  {row.precision}, augmentation {row.augmentation}: soupflow {row.soupflow_img_s:.0f} img/s;{bare} "
              f"vs per-sample DataLoader {row.dataloader_img_s:.0f} -> ratio {row.ratio_vs_dataloader:.2f}"
              + (" (goal >= 3)" if row.precision != "data path only" else ""))
    return table


def bench_selection(work: Path, results: Path) -> pd.DataFrame:
    """The default's greedy and pruned soups re-cooked from a finished workflow's results folder, with exact
    early rejection and without (the memo on in both): val images scored and seconds, against full passes
    (every trace candidate a whole val pass, as before the memo and early rejection)."""
    from soupflow.jobs.soup import SoupPaths, make_soup
    from soupflow.plan import layout
    from soupflow.plan.config import resolve_config
    from soupflow.plan.params import soup_specs

    config = resolve_config(yaml.safe_load((ROOT / "config.yaml").read_text()), check_model=False)
    if not (results / "metrics" / "runs.parquet").exists():
        raise SystemExit(f"--only selection needs a finished workflow: no {results}/metrics/runs.parquet")
    rows = []
    for name, spec in soup_specs(config).items():
        if spec["recipe"] not in {"greedy", "pruned"}:
            continue
        for early in (False, True):
            out = work / "selection" / f"{name}-{early}"
            paths = SoupPaths(layout.data_files(f"{results}/data")["data"], layout.runs_table(f"{results}/metrics"),
                              **layout.soup_files(str(out)))
            start = time.perf_counter()
            frame = make_soup(config, name, {**spec, "early_rejection": early}, paths, threads=2)
            seconds = time.perf_counter() - start
            candidates = len(pd.read_parquet(paths.trace))
            rows.append({"soup": name, "early_rejection": early, "seconds": seconds,
                         "images": int(frame.val_images_scored.iloc[0]),
                         "full_pass_images": candidates * int(frame.val_images_per_pass.iloc[0]),
                         "ingredients": json.dumps(list(frame.ingredients.iloc[0]))})
    table = pd.DataFrame(rows)
    print("\nselection: the default's greedy + pruned soups (val images scored; seconds of the soup jobs)")
    for name, group in table.groupby("soup", sort=False):
        off, on = group[~group.early_rejection].iloc[0], group[group.early_rejection].iloc[0]
        same = "same soup" if off.ingredients == on.ingredients else "DIFFERENT SOUP"
        print(f"  {name}: images {on.images} vs memo only {off.images} ({on.images / off.images:.3f}) vs full passes "
              f"{on.full_pass_images} ({on.images / on.full_pass_images:.3f}); seconds {on.seconds:.1f} vs "
              f"{off.seconds:.1f} ({on.seconds / off.seconds:.3f}); {same}")
    on, off = table[table.early_rejection], table[~table.early_rejection]
    print(f"  greedy + pruned: images vs full passes {on.images.sum() / on.full_pass_images.sum():.3f} (goal <= 0.6), "
          f"vs memo only {on.images.sum() / off.images.sum():.3f}; seconds vs memo only "
          f"{on.seconds.sum() / off.seconds.sum():.3f}")
    return table


def _names(listed: str | None) -> list[str] | None:
    return listed.split(",") if listed else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["soups", "train", "dag", "selection", "data", "ddp"], action="append")
    parser.add_argument("--results", default=str(ROOT / "results"), help="a finished workflow (selection)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per throughput figure")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="train: where to train")
    parser.add_argument("--precisions", help="train: comma-separated, of fp32, bf16 (default fp32, + bf16 on CUDA)")
    parser.add_argument("--augmentations", help="train: comma-separated (default: every batch augmentation)")
    parser.add_argument("--repeats", type=int, default=5, help="train: measures of each figure, in turns")
    parser.add_argument("--root", default=common.FASHION, help="Fashion-MNIST IDX folder")
    parser.add_argument("--greedy-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.FASHION = args.root  # where every section reads the data
    if args.greedy_child:
        return _greedy_child(args)
    from soupflow.store.io import atomic_write_parquet

    sections = args.only or ["soups", "train", "dag"]
    print(f"soupflow bench on {machine()}")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="soupflow-bench-") as scratch:
        work = Path(scratch)
        for section in sections:
            table = {"soups": lambda: bench_soups(work), "train": lambda: bench_train(work, args.steps, args.device, _names(args.precisions),
                                                                  _names(args.augmentations), args.repeats),
                     "dag": lambda: bench_dag(work), "data": lambda: bench_data(work), "ddp": lambda: bench_ddp(work),
                     "selection": lambda: bench_selection(work, Path(args.results))}[section]()
            table["machine"] = machine()
            atomic_write_parquet(table, out / f"{section}.parquet")
    print(f"\nwritten: {', '.join(str(out / f'{s}.parquet') for s in sections)}")


if __name__ == "__main__":
    main()
