"""The parts of ``bench/gpu_check.sh`` that are Python: each writes one JSON of figures and exits non-zero when
what it checks does not hold. ``--device cuda`` on a GPU machine, ``--device cpu`` for the shrunk dry run.

    python bench/gpu_check.py config --mode gpu|dry --data FASHION --out CONFIG.yaml
    python bench/gpu_check.py smoke WORK --device cuda --precision bf16 --log SNAKEMAKE.log --out smoke.json
    python bench/gpu_check.py train WORK --device cuda --out train.json   # WORK/train/train.parquet of run.py
    python bench/gpu_check.py files WORK --device cuda --model resnet50 --workers 8 --data FASHION --out files.json
    python bench/gpu_check.py ddp WORK --device cuda --data FASHION --out ddp.json
    python bench/gpu_check.py soups WORK --device cuda --out soups.json   # on WORK/smoke's results

WORK is the check's scratch folder: the smoke workflow runs in WORK/smoke, each other part in WORK/<part>.
    python bench/gpu_check.py summary OUTDIR            # the table of OUTDIR/status.tsv

Figures are taken once (no repeats): on a GPU lent for minutes the check is about whether each path runs on
the GPU as it should, and roughly how fast, not about a third decimal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "studies"))

#: what the dry run shrinks in the smoke experiment (tests/smoke.yaml), to stay within seconds on 2 CPU cores
DRY_SMOKE = {"data": {"max_train": 300, "max_test": 100}, "pretrain": {"epochs": 1},
             "grid": {"lr": [0.01, 0.03]}, "runs": [],
             "soups": [{"recipe": "uniform"}, {"recipe": "greedy"}, {"name": "uniform_bn", "recipe": "uniform",
                                                                      "bn": "recompute", "bn_images": 50}]}


def write_json(path: str, record: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(json.dumps(record, default=str))


# ------------------------------------------------------------------ config of the smoke workflow
def smoke_config(mode: str, data: str) -> dict:
    """tests/smoke.yaml on ``data``, pinned to the device the check expects (``evaluation.device: cuda`` fails a
    job that would fall back to the CPU) and bf16 (``auto`` is bf16 on CUDA; the dry run asks for it on CPU)."""
    import yaml

    config = yaml.safe_load((ROOT / "tests" / "smoke.yaml").read_text())
    config.pop("analysis", None)
    if mode == "dry":
        for key, value in DRY_SMOKE.items():
            config[key] = {**config[key], **value} if isinstance(value, dict) and key in ("data", "pretrain") else value
    config["data"]["root"] = data
    config["evaluation"] = {"device": "cuda" if mode == "gpu" else "cpu"}
    config["training"] = {"precision": "auto" if mode == "gpu" else "bf16"}
    return config


# ------------------------------------------------------------------ smoke: every model job on the device
def smoke(work: Path, device: str, precision: str, snakemake_log: str) -> dict:
    """From a finished smoke workflow: the runs table's ``device`` column and each run checkpoint's recorded
    device and autocast precision; the device each job's log names; the GPU resource Snakemake gave the jobs."""
    import pandas as pd
    from safetensors import safe_open

    work = work / "smoke"
    results = work / "results"
    runs = pd.read_parquet(results / "metrics" / "runs.parquet")
    trained = runs[runs.status != "failed"]
    checkpoints = {}
    for run_id in trained.run_id:
        with safe_open(str(results / "runs" / run_id / "model.safetensors"), framework="pt") as handle:
            meta = handle.metadata()
        checkpoints[run_id] = {"device": meta.get("device"), "precision": meta.get("precision")}
    logs = {path.relative_to(work).as_posix(): path.read_text(errors="replace")
            for path in sorted(results.rglob("*.log"))}
    finetune_logs = [text for name, text in logs.items() if name.endswith("train.log")]
    text = Path(snakemake_log).read_text(errors="replace")
    gpu_jobs = len(re.findall(r"\bgpu=1\b", text))
    record = {"runs": len(runs), "runs_device": sorted(set(runs.device)), "checkpoints": checkpoints,
              "finetune_logs_naming_device": sum(f"images, {device}" in t for t in finetune_logs),
              "finetune_logs": len(finetune_logs), "jobs_with_gpu_resource": gpu_jobs,
              "train_images_per_second": float(trained.train_images_per_second.median()),
              "val_accuracy_max": float(trained.val_accuracy.max())}
    problems = [f"run {r} trained on {c['device']}/{c['precision']}" for r, c in checkpoints.items()
                if (c["device"], c["precision"]) != (device, precision)]
    problems += [f"runs.parquet device {d}" for d in record["runs_device"] if d != device]
    if record["finetune_logs_naming_device"] != len(finetune_logs):
        problems.append(f"{len(finetune_logs) - record['finetune_logs_naming_device']} fine-tune logs name "
                        f"another device than {device}")
    if device == "cuda" and gpu_jobs < len(runs):
        problems.append(f"only {gpu_jobs} jobs asked for resource gpu=1 (runs: {len(runs)})")
    record["problems"] = problems
    record["key"] = (f"{len(checkpoints)} runs on {device}/{precision}, "
                     f"{record['train_images_per_second']:.0f} img/s median")
    return record


# ------------------------------------------------------------------ train: bench/run.py --only train's table
def train_table(table_path: Path, device: str) -> dict:
    """The figures of ``bench/run.py --only train`` (its parquet) as JSON: soupflow's ``train()`` vs the bare
    loop per precision and augmentation; a problem when it did not run on ``device`` or lacks bf16."""
    import pandas as pd

    table = pd.read_parquet(table_path)
    rows = table[table.precision.isin(["fp32", "bf16"])]
    ratios = {f"{r.precision} {r.augmentation}": round(float(r.ratio_vs_bare), 3) for r in rows.itertuples()}
    problems = [f"trained on {d}" for d in set(rows.device) if d != device]
    problems += [f"no {p} figure" for p in ("fp32", "bf16") if p not in set(rows.precision)]
    return {"rows": table.drop(columns=["machine"], errors="ignore").to_dict("records"), "ratio_vs_bare": ratios,
            "problems": problems,
            "key": "soupflow/bare " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())}


# ------------------------------------------------------------------ files path vs tensors already on the device
@dataclass(frozen=True)
class FilesSetting:
    device: str
    model: str
    size: int
    workers: int
    batch: int
    batches: int
    images: int
    auto_augment: str | None
    precision: str = "auto"  # bf16 on CUDA


def _files_hp(setting: FilesSetting, share: float) -> dict:
    return {"lr": 0.01, "weight_decay": 1e-4, "epochs": 1, "batch_size": setting.batch, "optimizer": "sgd",
            "momentum": 0.9, "nesterov": True, "schedule": "constant", "seed": 0, "augmentation": "flip",
            "crop_scale": 0.25, "auto_augment": setting.auto_augment, "data_fraction": share}


def files_path(work: Path, setting: FilesSetting, data_root: str) -> dict:
    """Fine-tune images/s (bf16 on CUDA) of ``setting.model`` on 224 px JPEGs streamed by ``workers`` DataLoader
    processes (soupflow's files path, RandomResizedCrop + flip), against the same training on uint8 tensors
    already on the device (the tensors path, no loader: the ceiling). Ratio near 1: the loader keeps up."""
    import torch

    from soupflow.core.models import create_model, pick_device
    from soupflow.core.train import TensorSource, TrainingOptions, fine_tuning_source, train
    from soupflow.store.datasets import open_data, prepare
    from soupflow.store.image_folders import export_fashion_mnist

    started = time.perf_counter()
    root = work / f"jpeg{setting.size}-{setting.images}"
    if not (root / "test").exists():
        export_fashion_mnist(root, setting.size, setting.images, max(20, setting.images // 20),
                             root=data_root)
    prepared = work / f"prepared{setting.size}-{setting.images}"
    if not (prepared / "files.parquet").exists():
        prepared.mkdir(parents=True, exist_ok=True)
        prepare({"name": "image_folder", "format": "files", "root": str(root), "image_size": setting.size,
                 "pretrain_fraction": 0.0, "val_fraction": 0.05, "normalize": "pretrained"}, 0,
                str(prepared / "files.parquet"), str(prepared / "splits.json"), setting.model)
    export_seconds = time.perf_counter() - started
    data = open_data(str(prepared / "files.parquet"), workers=setting.workers)
    device = pick_device(setting.device)
    n_train = data.labels("train").shape[0]
    images = setting.batch * setting.batches
    hp = _files_hp(setting, min(1.0, images / n_train))

    def model():
        torch.manual_seed(0)
        return create_model({"name": setting.model, "kwargs": {}}, data.num_classes, data.image_shape[0])

    channels, height, width = data.image_shape
    generator = torch.Generator().manual_seed(0)
    tensors = torch.randint(0, 256, (images, channels, height, width), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, data.num_classes, (images,), generator=generator)
    tensors, labels = tensors.to(device), labels.to(device)
    warm_hp = {**hp, "augmentation": "none"}
    warm = TensorSource.of(tensors[: 3 * setting.batch], labels[: 3 * setting.batch], warm_hp)
    numerics = {"log_every": 10**6, "options": TrainingOptions(precision=setting.precision)}
    train(model(), warm, data, warm_hp, device, name="warm-up", **numerics)  # kernels, cudnn, allocator
    ceiling = train(model(), TensorSource.of(tensors, labels, warm_hp), data, warm_hp, device, name="tensors",
                    **numerics)
    del tensors
    streamed = train(model(), fine_tuning_source(data, hp), data, hp, device, name="files", **numerics)
    ratio = streamed.images_per_second / ceiling.images_per_second
    expected = "bf16" if setting.precision == "auto" and device.type == "cuda" else setting.precision
    return {**asdict(setting), "device_used": str(device), "precision": streamed.precision,
            "train_images": n_train, "steps": streamed.steps, "files_img_s": streamed.images_per_second,
            "tensors_on_device_img_s": ceiling.images_per_second, "ratio_files_vs_tensors": ratio,
            "export_and_prepare_seconds": export_seconds,
            "problems": [f"trained in {streamed.precision}"] if expected not in ("auto", streamed.precision) else [],
            "key": f"files {streamed.images_per_second:.0f} vs on-device {ceiling.images_per_second:.0f} img/s "
                   f"= {ratio:.2f} ({setting.model}, {setting.workers} workers)"}


# ------------------------------------------------------------------ torch.distributed: the launcher, NCCL
PROBE_MODEL = {"name": "resnet10t", "kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16}}


def probe() -> dict:
    """In each process torchrun starts: join soupflow's process group (NCCL on CUDA, gloo on CPU), all-reduce,
    and train a few bf16 steps of a model in DistributedDataParallel (which soupflow's ``wrap`` leaves out with
    one process: this is the DDP code path itself)."""
    import torch
    import torch.distributed as dist

    from soupflow.core.distributed import join
    from soupflow.core.models import create_model

    place = join()
    device = torch.device("cuda", place.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    total = torch.ones(1, device=device)
    dist.all_reduce(total)
    torch.manual_seed(0)
    model = create_model(PROBE_MODEL, 10, 1).to(device).to(memory_format=torch.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(5):
        x = torch.randn(64, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (64,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    record = {"backend": dist.get_backend(), "world_size": place.size, "all_reduce": float(total.item()),
              "device": str(device), "ddp_losses": losses}
    dist.destroy_process_group()
    return record


def ddp(work: Path, device: str, data_root: str) -> dict:
    """``training.devices_per_run: 1`` through torchrun (``jobs.launch.launch``, as a job of several processes
    starts; finetune calls it only above 1) against the plain path, and the DDP probe under torchrun."""
    import pandas as pd
    import torch
    from safetensors import safe_open

    from soupflow.core.models import model_for, save_checkpoint
    from soupflow.jobs.finetune import RunPaths, RunSpec, finetune
    from soupflow.jobs.launch import Launch, launch
    from soupflow.plan.config import DEFAULTS, merge_defaults
    from soupflow.plan.layout import run_files
    from soupflow.store.datasets import open_data, prepare

    work.mkdir(parents=True, exist_ok=True)
    data = str(work / "data.safetensors")
    if not Path(data).exists():
        prepare({**DEFAULTS["data"], "root": data_root, "max_train": 4000 if device == "cuda" else 600,
                 "max_test": 500}, 0, data, str(work / "splits.json"))
    torch.manual_seed(0)
    save_checkpoint(model_for(open_data(data), PROBE_MODEL).state_dict(), work / "init.safetensors")
    config = merge_defaults({"model": PROBE_MODEL, "evaluation": {"device": device},
                             "training": {"devices_per_run": 1, "checkpoint_every_steps": 0}})
    hp = {**config["finetune"], "epochs": 1, "batch_size": 128}
    rates, meta = {}, {}
    for way in ("plain", "launcher"):
        paths = RunPaths(**run_files(str(work / way)))
        run = RunSpec(data, str(work / "init.safetensors"), "run-ddp", hp)
        started = time.perf_counter()
        if way == "launcher":
            launch(Launch(finetune, config, (run, paths), 2), work / way)
        else:
            finetune(config, run, paths, 2)
        row = pd.read_parquet(paths.metrics).iloc[0]
        with safe_open(paths.model, framework="pt") as handle:
            meta[way] = {k: handle.metadata().get(k) for k in ("device", "precision")}
        rates[way] = {"img_s": float(row.train_images_per_second), "device": row.device, "status": row.status,
                      "seconds": time.perf_counter() - started}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                          "--nproc-per-node", "1", __file__, "probe"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                                           os.environ.get("PYTHONPATH", "")])})
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    found = json.loads(lines[-1]) if out.returncode == 0 and lines else {"error": out.stderr[-2000:]}
    backend = "nccl" if device == "cuda" else "gloo"
    problems = [f"{way}: {r['status']} on {r['device']}" for way, r in rates.items()
                if (r["status"], r["device"]) != ("ok", device)]
    expected = {"device": device, "precision": "bf16" if device == "cuda" else "fp32"}  # training.precision auto
    problems += [f"{way} checkpoint: {m}" for way, m in meta.items() if m != expected]
    if found.get("backend") != backend or found.get("all_reduce") != 1.0:
        problems.append(f"probe: {found}")
    ratio = rates["launcher"]["img_s"] / rates["plain"]["img_s"]
    return {"runs": rates, "checkpoints": meta, "probe": found, "ratio_launcher_vs_plain": ratio,
            "problems": problems,
            "key": f"{found.get('backend')} DDP ok={not problems}; launcher/plain img/s {ratio:.2f}"}


# ------------------------------------------------------------------ the soups job on the device vs on CPU
def soups(results: Path, device: str, work: Path) -> dict:
    """The soups job of a finished workflow (``results``) cooked on ``device`` and on the CPU, one process each
    (``soups_phase._one_job``: imports included); their seconds and whether they chose the same ingredients."""
    import pandas as pd
    import yaml
    from safetensors import safe_open
    from soups_phase import _one_job

    from soupflow.plan.params import soup_specs

    config = yaml.safe_load((results / "config.yaml").read_text())
    entries = soup_specs(config)
    seconds, chosen = {}, {}
    for where in dict.fromkeys((device, "cpu")):
        out = work / f"soups-{where}"
        seconds[where] = _one_job({**config, "evaluation": {**config["evaluation"], "device": where}}, entries,
                                  results, out)
        chosen[where] = {}
        for name in entries:
            with safe_open(str(out / name / "model.safetensors"), framework="pt") as handle:
                chosen[where][name] = handle.metadata().get("ingredients")
        chosen[where]["val"] = pd.concat(pd.read_parquet(out / n / "metrics.parquet") for n in entries
                                         ).val_accuracy.round(4).tolist()
    same = chosen[device] == chosen["cpu"]
    ratio = seconds[device] / seconds["cpu"]
    return {"soups": len(entries), "seconds": seconds, "ratio_device_vs_cpu": ratio, "same_soups": same,
            "chosen": chosen, "problems": [],
            "key": f"{len(entries)} soups {seconds[device]:.1f} s on {device} vs {seconds['cpu']:.1f} s cpu "
                   f"({ratio:.2f}); {'same' if same else 'other'} ingredients"}


# ------------------------------------------------------------------ the table
def summary(outdir: Path) -> str:
    """The table of ``OUTDIR/status.tsv`` (part, status, seconds; the key figure from ``OUTDIR/<part>.json``)."""
    rows = [line.split("\t") for line in (outdir / "status.tsv").read_text().splitlines() if line.strip()]
    lines = [f"{'part':<8} {'status':<8} {'seconds':>7}  key figure"]
    for part, status, seconds in rows:
        figures = outdir / f"{part}.json"
        key = json.loads(figures.read_text()).get("key", "") if figures.exists() and status == "ok" else ""
        if status == "FAIL":
            key = f"see {outdir / 'logs' / (part + '.log')}"
        lines.append(f"{part:<8} {status:<8} {seconds:>7}  {key}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["config", "smoke", "train", "files", "ddp", "soups", "probe", "summary"])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--out")
    parser.add_argument("--mode", choices=["gpu", "dry"], default="gpu")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--log")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--images", type=int, default=6000, help="JPEGs exported for the files part")
    parser.add_argument("--auto-augment", default=None)
    parser.add_argument("--files-precision", default="auto", help="files: training.precision (auto: bf16 on CUDA)")
    args = parser.parse_args()
    if args.part == "probe":
        record = probe()
        print(json.dumps(record))
        return
    if args.part == "summary":
        print(summary(args.folder))
        return
    if args.part == "config":
        import yaml

        Path(args.out).write_text(yaml.safe_dump(smoke_config(args.mode, args.data)))
        return
    setting = FilesSetting(args.device, args.model, args.size, args.workers, args.batch, args.batches, args.images,
                           args.auto_augment, args.files_precision)
    work = args.folder
    record = {"smoke": lambda: smoke(work, args.device, args.precision, args.log),
              "train": lambda: train_table(work / "train" / "train.parquet", args.device),
              "files": lambda: files_path(work / "files", setting, args.data),
              "ddp": lambda: ddp(work / "ddp", args.device, args.data),
              "soups": lambda: soups(work / "smoke" / "results", args.device, work / "soups")}[args.part]()
    write_json(args.out, record)
    if record["problems"]:
        raise SystemExit(f"{args.part}: " + "; ".join(record["problems"]))


if __name__ == "__main__":
    main()
