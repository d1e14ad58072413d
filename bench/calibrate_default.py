"""Calibrate the embedded default: for candidate (pretrain, grid) settings, run the whole experiment in one
process (no Snakemake) and print best individual / uniform / greedy test accuracy.

    python bench/calibrate_default.py --root /usr/share/datasets/fashion-mnist [--variants a,b]

This is how the default in config.yaml was chosen; it runs on a GPU when one is present.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from soupflow.config import merge_defaults  # noqa: E402
from soupflow.data import PreparedData, prepare  # noqa: E402
from soupflow.evaluate import Evaluator  # noqa: E402
from soupflow.grid import expand_runs  # noqa: E402
from soupflow.models import create_model, pick_device  # noqa: E402
from soupflow.recipes import Ingredient, Kitchen, cook  # noqa: E402
from soupflow.train import train  # noqa: E402

BASE = {
    "data": {"name": "fashion_mnist", "pretrain_fraction": 0.6667, "val_fraction": 0.0833},
    "model": {"name": "resnet10t", "kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16}},
    "pretrain": {"epochs": 3, "lr": 0.05, "weight_decay": 5e-4, "batch_size": 128, "augmentation": "flip_shift"},
    "finetune": {"epochs": 2, "batch_size": 128},
    "grid": {"lr": [0.003, 0.01, 0.03], "weight_decay": [1e-5, 3e-4], "augmentation": ["none", "flip_shift"]},
    "soups": [{"recipe": "uniform"}],
}

VARIANTS = {
    "issue": {},
    "seeds": {"grid": {"lr": [0.01, 0.03], "seed": [0, 1, 2], "augmentation": ["none", "flip_shift"]}},
    "seeds_smooth": {"grid": {"lr": [0.01, 0.03], "seed": [0, 1, 2], "label_smoothing": [0.0, 0.1]}},
    "seeds_aug": {"grid": {"lr": [0.01, 0.03], "seed": [0, 1, 2], "augmentation": ["flip", "flip_shift"]}},
    "seeds_lr3": {"grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "augmentation": ["none", "flip_shift"]}},
    "seeds_const": {"grid": {"lr": [0.01, 0.03], "seed": [0, 1, 2], "augmentation": ["none", "flip_shift"]},
                    "finetune": {"schedule": "constant"}},
    "seeds_wd": {"grid": {"lr": [0.01, 0.03], "weight_decay": [1e-5, 3e-4], "seed": [0, 1, 2]}},
    "smooth_seed": {"grid": {"lr": [0.003, 0.01, 0.03], "label_smoothing": [0.0, 0.1], "seed": [0, 1]}},
    "seeds_smooth_aug": {"grid": {"lr": [0.01, 0.03], "seed": [0, 1, 2], "label_smoothing": [0.0, 0.1]},
                         "finetune": {"augmentation": "flip_shift"}},
    "seeds_aug_lr3": {"grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "augmentation": ["flip", "flip_shift"]}},
    "seeds_aug_wd": {"grid": {"lr": [0.01, 0.03], "weight_decay": [1e-5, 3e-4], "seed": [0, 1, 2]},
                     "finetune": {"augmentation": "flip"}},
    "seeds_aug_hi": {"grid": {"lr": [0.03, 0.1], "seed": [0, 1, 2], "augmentation": ["flip", "flip_shift"]}},
}

def deep(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = deep(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "grid" else value
    return out


def experiment(config: dict, work: Path, cache: dict) -> dict:
    device = pick_device()
    data_path = work / "data.safetensors"
    if not data_path.exists():
        prepare(config["data"], config["seed"], str(data_path), str(work / "splits.json"))
    data = PreparedData(data_path)
    key = repr(sorted(config["pretrain"].items()))
    start = time.perf_counter()
    if key not in cache:
        model = create_model(config["model"], data.num_classes, 1)
        torch.manual_seed(0)
        hp = {**config["pretrain"], "nesterov": True, "label_smoothing": 0.0, "warmup_fraction": 0.3}
        train(model, *data.split("pretrain"), data, hp, device, name="pretrain", log_every=10**9)
        cache[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    init = cache[key]
    runs, states = expand_runs(config), {}
    for run_id, hp in runs.items():
        model = create_model(config["model"], data.num_classes, 1)
        model.load_state_dict(init)
        result = train(model, *data.split("train"), data, hp, device, name=run_id, log_every=10**9)
        if result.status == "ok":
            states[run_id] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    val = Evaluator(create_model(config["model"], data.num_classes, 1), data, "val", device)
    test = Evaluator(create_model(config["model"], data.num_classes, 1), data, "test", device)
    ingredients = [Ingredient(r, val.scores(s), (lambda s=s: s)) for r, s in states.items()]
    kitchen = Kitchen(ingredients, val.scores)
    best = kitchen.ranked("accuracy")[0]
    out = {"best_val": best.val.accuracy, "best_test": test.scores(states[best.name]).accuracy,
           "min_test": min(test.scores(s).accuracy for s in states.values()),
           "max_test": max(test.scores(s).accuracy for s in states.values())}
    for recipe in ("uniform", "greedy"):
        soup = cook(recipe, kitchen, {})[0]
        out[f"{recipe}_val"], out[f"{recipe}_test"] = soup.val.accuracy, test.scores(soup.total.mean()).accuracy
        out[f"{recipe}_n"] = len(soup.ingredients)
    out["seconds"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    cache: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            config = merge_defaults(deep(BASE, VARIANTS[name]))
            config["data"]["root"] = args.root
            result = experiment(config, Path(tmp), cache)
            print(name, " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
