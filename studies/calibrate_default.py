"""Calibrate the embedded default: run candidate experiments through the workflow (``snakemake --cores N``,
one folder per variant and top-level seed) and print, for each, the best individual, the mean ingredient and
every soup with its paired 95 % interval against the best individual.

    python studies/calibrate_default.py --variants smallft_a,mixdiv --seeds 0,1,2 [--work DIR] [--out rows.jsonl]

A variant's folder under ``--work`` is a workflow's working directory: a rerun (other recipes, say) trains
nothing again. This is how config.yaml's default was chosen: studies/CALIBRATION.md has the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from soupflow.jobs.script import setup_logging  # noqa: E402
from soupflow.jobs.soup import CachedLogits  # noqa: E402
from soupflow.plan import layout  # noqa: E402
from soupflow.plan.config import resolve_config  # noqa: E402
from soupflow.store.datasets import open_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOUPS = [{"recipe": "best_individual"}, {"recipe": "uniform"}, {"recipe": "greedy"}, {"recipe": "pruned"},
         {"name": "uniform_bn", "recipe": "uniform", "bn": "recompute"},
         {"name": "greedy_bn", "recipe": "greedy", "bn": "recompute"},
         {"name": "greedy_loss", "recipe": "greedy", "metric": "loss"},
         {"name": "greedy_loss_bn", "recipe": "greedy", "metric": "loss", "bn": "recompute"},
         {"recipe": "model_stock"}, {"recipe": "wise_ft", "base": "greedy"}, {"recipe": "learned"}]
#: ``--screen``: enough to read a variant's ceiling (the ensemble of all, in the uniform row) and greedy, in
#: about half the time
SCREEN = SOUPS[:3]
#: ``--screen-bn``: the screen and its two recipes with re-estimated BatchNorm statistics
SCREEN_BN = SCREEN + [spec for spec in SOUPS if spec.get("name") in {"uniform_bn", "greedy_bn"}]

#: The default before calibration (soupflow <= a31c901): every variant below is a change to it (dicts merge,
#: lists and the grid replace), so the table stays reproducible whatever config.yaml holds now.
BASE = {
    "data": {"name": "fashion_mnist", "root": "/usr/share/datasets/fashion-mnist", "pretrain_fraction": 0.6667,
             "val_fraction": 0.0833},
    "model": {"name": "resnet10t", "kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16}, "init": "pretrain"},
    "pretrain": {"epochs": 3, "lr": 0.05, "weight_decay": 0.0005, "batch_size": 128, "augmentation": "flip_shift",
                 "keep_every": 1},
    "finetune": {"epochs": 2, "batch_size": 128, "optimizer": "sgd", "momentum": 0.9, "nesterov": True,
                 "schedule": "onecycle"},
    "grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "augmentation": ["none", "flip_shift"]},
}

def deep(base: dict, update: dict) -> dict:
    """``update`` merged into a copy of ``base``: dicts merge, lists and the grid (and model kwargs) replace."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        merge = isinstance(value, dict) and isinstance(out.get(key), dict) and key not in {"grid", "kwargs"}
        out[key] = deep(out[key], value) if merge else copy.deepcopy(value)
    return out


#: the bigtest split (25k test images: data.test_fraction) with smallft_a's fine-tunes; bigtest_* change it
BIGTEST = {"data": {"pretrain_fraction": 0.5, "val_fraction": 0.1667, "test_fraction": 0.25},
           "pretrain": {"epochs": 8}, "finetune": {"epochs": 10},
           "grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "label_smoothing": [0.0, 0.1], "augmentation": ["flip"]}}
NARROW = {"kwargs": {"channels": [12, 24, 48, 96], "stem_width": 12}}
BRANCH = {"lr": [0.01, 0.02, 0.04], "branch_epoch": [6, 8], "label_smoothing": [0.0, 0.1], "augmentation": ["flip"]}
BRANCH3 = {"lr": [0.02, 0.04], "branch_epoch": [4, 6, 8], "label_smoothing": [0.0, 0.1], "augmentation": ["flip"]}

#: Lite0 variants (``_base``: experiments/lite0_fmnist.yaml) fine-tuned after a linear probe of the head
LPFT = {"_base": "lite0", "model": {"linear_probe": True, "init_bn": "recompute"}}
LPFT_ADAMW = deep(LPFT, {"finetune": {"optimizer": "adamw"}})
ONE_LR_LS = {"lr": [0.001], "seed": [0, 1, 2], "label_smoothing": [0.0, 0.1]}

VARIANTS: dict[str, dict] = {
    "old_default": {},
    "ft6": {"finetune": {"epochs": 6}},
    "pre6_ft4": {"pretrain": {"epochs": 6}, "finetune": {"epochs": 4}},
    "wide": {"model": {"kwargs": {"channels": [24, 48, 96, 192], "stem_width": 24}}},
    "smooth": {"grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "label_smoothing": [0.0, 0.1]}},
    "const": {"finetune": {"schedule": "constant"}, "grid": {"lr": [0.005, 0.01, 0.02], "seed": [0, 1],
                                                             "augmentation": ["none", "flip_shift"]}},
    "hilr": {"pretrain": {"epochs": 6}, "finetune": {"epochs": 4},
             "grid": {"lr": [0.05, 0.1, 0.2], "seed": [0, 1, 2, 3]}},
    "seeds_none": {"pretrain": {"epochs": 6}, "finetune": {"epochs": 4},
                   "grid": {"lr": [0.02, 0.04], "seed": [0, 1, 2, 3, 4, 5]}},
    "const_none": {"pretrain": {"epochs": 6}, "finetune": {"epochs": 4, "schedule": "constant"},
                   "grid": {"lr": [0.005, 0.01, 0.02], "seed": [0, 1, 2, 3]}},
    "mid": {"pretrain": {"epochs": 6}, "finetune": {"epochs": 4},
            "grid": {"lr": [0.03, 0.06, 0.1], "seed": [0, 1, 2, 3]}},
    "mixdiv": {"pretrain": {"epochs": 6}, "finetune": {"epochs": 4},
               "grid": {"lr": [0.04, 0.08], "label_smoothing": [0.0, 0.1], "augmentation": ["none", "flip"]}},
    "mix12_val10k": {"data": {"pretrain_fraction": 0.5833, "val_fraction": 0.1667},
                     "pretrain": {"epochs": 7}, "finetune": {"epochs": 4},
                     "grid": {"lr": [0.03, 0.05, 0.08], "label_smoothing": [0.0, 0.1], "augmentation": ["none", "flip"]}},
    # what config.yaml holds now
    "smallft_a": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
                  "pretrain": {"epochs": 6}, "finetune": {"epochs": 10},
                  "grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "label_smoothing": [0.0, 0.1],
                           "augmentation": ["flip"]}},
    # diversity from mixup (Wortsman et al.'s grid has it): instead of label smoothing, and on top of it
    "smallft_mix": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
                    "pretrain": {"epochs": 6}, "finetune": {"epochs": 10},
                    "grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "mixup": [0.0, 0.4],
                             "augmentation": ["flip"]}},
    "smallft_mix_ls": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
                       "pretrain": {"epochs": 6}, "finetune": {"epochs": 10},
                       "grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "label_smoothing": [0.0, 0.1],
                                "mixup": [0.0, 0.4], "augmentation": ["flip"]}},
    "smallft_mix_ls02": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
                         "pretrain": {"epochs": 6}, "finetune": {"epochs": 10},
                         "grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "label_smoothing": [0.0, 0.1],
                                  "mixup": [0.0, 0.2], "augmentation": ["flip"]}},
    # statistical power: 15k of the training images join the 10k official test images (data.test_fraction), so
    # every paired interval is ~1.5x narrower; pretraining gets 30k images (8 epochs: about smallft_a's steps)
    "bigtest_a": BIGTEST,
    "bigtest_wide": deep(BIGTEST, {"model": {"kwargs": {"channels": [24, 48, 96, 192], "stem_width": 24}}}),
    "bigtest_narrow": deep(BIGTEST, {"model": NARROW}),
    "bigtest_pre3": deep(BIGTEST, {"pretrain": {"epochs": 3}}),
    "bigtest_ft20": deep(BIGTEST, {"finetune": {"epochs": 20}}),
    # branch points (the "Too Salty" lever): runs leave the pretraining trajectory at different epochs
    "bigtest_branch": deep(BIGTEST, {"grid": BRANCH}),
    "bigtest_branch3": deep(BIGTEST, {"grid": BRANCH3}),
    "bigtest_narrow_branch3": deep(BIGTEST, {"model": NARROW, "grid": BRANCH3}),
    "bigtest_branch_ft20": deep(BIGTEST, {"finetune": {"epochs": 20}, "grid": BRANCH}),
    "bigtest_lsmix": deep(BIGTEST, {"grid": {"lr": [0.01, 0.02, 0.04], "label_smoothing": [0.0, 0.1],
                                             "mixup": [0.0, 0.4], "augmentation": ["flip"]}}),
    # smallft_a fine-tuned with AdamW (Wortsman et al.'s optimizer; with LP-FT on Lite0 it kept runs closest)
    "smallft_adamw": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
                      "pretrain": {"epochs": 6}, "finetune": {"epochs": 10, "optimizer": "adamw"},
                      "grid": {"lr": [0.0003, 0.001, 0.003], "seed": [0, 1], "label_smoothing": [0.0, 0.1],
                               "augmentation": ["flip"]}},
    # smallft_a with twice the runs (seeds 0-3): more ingredients, a higher ensemble ceiling?
    "smallft_a24": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
                    "pretrain": {"epochs": 6}, "finetune": {"epochs": 10},
                    "grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1, 2, 3], "label_smoothing": [0.0, 0.1],
                             "augmentation": ["flip"]}},
    "smallft_b": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
                  "pretrain": {"epochs": 6}, "finetune": {"epochs": 10},
                  "grid": {"lr": [0.02, 0.05, 0.1], "seed": [0, 1, 2, 3]}},
    "smallft_const": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
                      "pretrain": {"epochs": 6}, "finetune": {"epochs": 10, "schedule": "constant"},
                      "grid": {"lr": [0.005, 0.01, 0.02], "seed": [0, 1], "label_smoothing": [0.0, 0.1],
                               "augmentation": ["flip"]}},
    # self-supervised transfer: pretrain on rotation prediction, fine-tune the classes on 5k labelled images
    "rot_lo": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
               "pretrain": {"epochs": 2, "task": "rotation", "augmentation": "shift"}, "finetune": {"epochs": 10},
               "grid": {"lr": [0.01, 0.02, 0.04], "seed": [0, 1], "label_smoothing": [0.0, 0.1],
                        "augmentation": ["flip"]}},
    "rot_hi": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
               "pretrain": {"epochs": 2, "task": "rotation", "augmentation": "shift"}, "finetune": {"epochs": 10},
               "grid": {"lr": [0.03, 0.06, 0.1], "seed": [0, 1], "label_smoothing": [0.0, 0.1],
                        "augmentation": ["flip"]}},
    # data diversity: each fine-tune trains on its own seeded share of the fine-tuning images (hyperparameter
    # data_fraction); shard_half keeps the 5k pool (2.5k per run), shard_quarter pools 20k (5k per run, as
    # smallft_a's runs), both with runs on all the pool's images in the same grid as the fair baseline
    "shard_half": {"data": {"pretrain_fraction": 0.75, "val_fraction": 0.1667},
                   "pretrain": {"epochs": 6}, "finetune": {"epochs": 10, "augmentation": "flip"},
                   "runs": [{"lr": 0.02, "seed": 0}, {"lr": 0.04, "seed": 0}],
                   "grid": {"lr": [0.02, 0.04], "seed": [0, 1, 2, 3, 4], "data_fraction": [0.5]}},
    "shard_quarter": {"data": {"pretrain_fraction": 0.5, "val_fraction": 0.1667},
                      "pretrain": {"epochs": 6}, "finetune": {"epochs": 10, "augmentation": "flip"},
                      "runs": [{"lr": 0.02, "seed": 0, "epochs": 3}, {"lr": 0.04, "seed": 0, "epochs": 3}],
                      "grid": {"lr": [0.02, 0.04], "seed": [0, 1, 2, 3, 4], "data_fraction": [0.25]}},
    # issue 11: real ImageNet weights (EfficientNet-Lite0, experiments/lite0_fmnist.yaml without its grid)
    "lite0": {"_base": "lite0", "grid": {"lr": [0.005, 0.01, 0.02], "seed": [0, 1]}},
    "lite0_frozen": {"_base": "lite0", "grid": {"lr": [0.005, 0.01, 0.02], "seed": [0, 1],
                                                "bn_statistics": ["frozen"]}},
    "lite0_low": {"_base": "lite0", "grid": {"lr": [0.001, 0.002, 0.004], "seed": [0, 1]}},
    "lite0_low_frozen": {"_base": "lite0", "grid": {"lr": [0.001, 0.002, 0.004], "seed": [0, 1],
                                                    "bn_statistics": ["frozen"]}},
    # the init's BatchNorm statistics re-estimated on Fashion-MNIST train images, then kept by every fine-tune
    "lite0_initbn_frozen": {"_base": "lite0", "model": {"init_bn": "recompute"},
                            "grid": {"lr": [0.005, 0.01, 0.02], "seed": [0, 1], "bn_statistics": ["frozen"]}},
    "lite0_initbn": {"_base": "lite0", "model": {"init_bn": "recompute"},
                     "grid": {"lr": [0.005, 0.01, 0.02], "seed": [0, 1]}},
    # LP-FT (LPFT): the head fitted as a linear probe on the train images' frozen features before the
    # fine-tunes, on statistics re-estimated on train images (the features the fine-tunes' training mode sees)
    "lite0_probe": deep(LPFT, {"grid": {"lr": [0.005, 0.01, 0.02], "seed": [0, 1]}}),
    "lite0_low_probe": deep(LPFT, {"grid": {"lr": [0.001, 0.002, 0.004], "seed": [0, 1]}}),
    "lite0_low_probe_e6": deep(LPFT, {"finetune": {"epochs": 6},
                                      "grid": {"lr": [0.001, 0.002, 0.004], "seed": [0, 1]}}),
    "lite0_probe_frozen": deep(LPFT, {"grid": {"lr": [0.002, 0.005, 0.01], "seed": [0, 1],
                                               "bn_statistics": ["frozen"]}}),
    "lite0_adamw_probe": deep(LPFT_ADAMW, {"grid": {"lr": [0.0001, 0.0002, 0.0004], "seed": [0, 1]}}),
    "lite0_adamw_probe_e6": deep(LPFT_ADAMW, {"finetune": {"epochs": 6},
                                              "grid": {"lr": [0.0001, 0.0002, 0.0004], "seed": [0, 1]}}),
    "lite0_adamw_probe_hi": deep(LPFT_ADAMW, {"grid": {"lr": [0.0005, 0.001, 0.002], "seed": [0, 1]}}),
    # every run at one good learning rate, diversity from seeds (and label smoothing): runs of equal quality
    "lite0_adamw_seeds": deep(LPFT_ADAMW, {"finetune": {"epochs": 6},
                                           "grid": {"lr": [0.0004], "seed": [0, 1, 2, 3, 4, 5]}}),
    "lite0_adamw_seeds_ls": deep(LPFT_ADAMW, {"finetune": {"epochs": 4}, "grid": ONE_LR_LS}),
    # the same with 5k val images (3k fine-tune): less noisy selection, less winner's curse for greedy
    "lite0_seeds_val5k": deep(LPFT_ADAMW, {"data": {"max_train": 8000, "val_fraction": 0.625},
                                           "finetune": {"epochs": 4}, "grid": ONE_LR_LS}),
    # for a GPU (not run yet): 64 px, all 60k training images (45k fine-tune, 15k val), 12 AdamW LP-FT runs at
    # one learning rate (runs of equal quality souped best on a CPU, docs/lite0.md's table)
    "gpu_lite0_64": deep(LPFT_ADAMW, {"data": {"image_size": 64, "max_train": None},
                                      "finetune": {"epochs": 6, "batch_size": 128},
                                      "grid": {"lr": [0.0004], "seed": [0, 1, 2, 3, 4, 5],
                                               "label_smoothing": [0.0, 0.1]}}),
}

#: experiments/lite0_fmnist.yaml's data, model and fine-tune settings (variants set the grid)
LITE0 = {key: value for key, value in yaml.safe_load((ROOT / "experiments" / "lite0_fmnist.yaml").read_text()).items()
         if key in {"data", "model", "finetune"}}
#: experiments/transfer_fmnist.yaml's settings (issue 26: few-label transfer to new classes); variants change them
TRANSFER = {key: value for key, value in yaml.safe_load((ROOT / "experiments" / "transfer_fmnist.yaml").read_text()).items()
            if key in {"data", "model", "pretrain", "finetune", "grid"}}
BASES = {"fmnist": BASE, "lite0": LITE0, "transfer": TRANSFER}
SEEDS_LS = {"seed": [0, 1], "label_smoothing": [0.0, 0.1]}
VARIANTS.update({
    "transfer": {"_base": "transfer"},
    # the same runs at a third to a tenth of the learning rates
    "transfer_lowlr": {"_base": "transfer", "grid": {"lr": [0.01, 0.02, 0.04], **SEEDS_LS}},
    # LP-FT: the head fitted on the pretrained features first, then 20 epochs at low learning rates
    "transfer_lpft": {"_base": "transfer", "model": {"linear_probe": True}, "finetune": {"epochs": 20},
                      "grid": {"lr": [0.01, 0.02, 0.04], **SEEDS_LS}},
    # shared training ("Too Salty"): one warm fine-tune of the init, then the runs branch (transfer_warm.yaml)
    "transfer_warm20": {"_base": "transfer", "model": {"shared_finetune": {"epochs": 20, "lr": 0.05}},
                        "finetune": {"epochs": 10}, "grid": {"lr": [0.005, 0.01, 0.02], **SEEDS_LS}},
    "transfer_warm10": {"_base": "transfer", "model": {"shared_finetune": {"epochs": 10, "lr": 0.05}},
                        "finetune": {"epochs": 15}, "grid": {"lr": [0.01, 0.02, 0.04], **SEEDS_LS}},
    # BatchNorm statistics kept at the init's (studies/frozen_bn.py measures why these runs collapse)
    "transfer_frozen": {"_base": "transfer", "grid": {"lr": [0.05, 0.1, 0.2], "bn_statistics": ["frozen"], **SEEDS_LS}},
})


def experiment(user: dict, folder: Path, soups: list[dict], cores: int) -> pd.DataFrame:
    """One whole experiment run by the workflow itself: ``user`` (with ``soups``) written as the config of
    ``folder``, then ``snakemake --cores N`` up to the soups table there (a rerun does only what is missing or
    changed). Returns the soups table, with the mean ingredient, the best individual and the ensemble ceiling
    in its ``attrs``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({**user, "soups": soups}, sort_keys=False))
    metrics = layout.MAIN.metrics
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", str(config),
                    "--directory", str(folder), "--cores", str(cores), f"{metrics}/soups.parquet",
                    "--quiet", "rules"], check=True)
    soups = pd.read_parquet(folder / metrics / "soups.parquet")
    runs = pd.read_parquet(folder / layout.runs_table(metrics))
    runs["outputs_file"] = [str(folder / path) for path in runs.outputs_file]
    resolved = resolve_config(user, check_model=False)
    soups.attrs["mean_ingredient_test"] = float(runs[runs.status == "ok"].test_accuracy.mean())
    soups.attrs["best_test"] = float(soups[soups.soup == "best_individual"].test_accuracy.iloc[0])
    soups.attrs["ceiling"] = ceiling(runs, str(folder / layout.data_files(data_format=resolved["data"]["format"])["data"]))
    return soups


def ceiling(runs: pd.DataFrame, data_path: str) -> dict[str, list[float]]:
    """The logit ensemble of the top-k runs by val, for every k: its gain over the best run by val in points, on
    val and on test. A diagnostic of how much the pool could give at all (a weight average seldom beats the
    ensemble of its ingredients); reading a best k off the test row would be selecting on test."""
    runs = runs[runs.status == "ok"].sort_values("val_accuracy", ascending=False, kind="stable")
    logits, data, out = CachedLogits(dict(zip(runs.run_id, runs.outputs_file))), open_data(data_path), {}
    for split in ("val", "test"):
        labels = data.labels(split)
        right = [(logits.mean(list(runs.run_id[:k]), split).argmax(1) == labels).float().mean().item()
                 for k in range(1, len(runs) + 1)]
        out[f"topk_{split}"] = [round(100 * (acc - right[0]), 2) for acc in right]
    return out


def row_of(variant: str, seed: int, soups: pd.DataFrame, seconds: float) -> dict:
    row = {"variant": variant, "seed": seed, "best": 100 * soups.attrs["best_test"],
           "mean_ingredient": 100 * soups.attrs["mean_ingredient_test"], "seconds": round(seconds),
           **soups.attrs["ceiling"]}
    for soup in soups.itertuples():
        if soup.soup == "best_individual":
            continue
        row[f"{soup.soup}_n"] = soup.n_ingredients
        row[soup.soup] = f"{100 * soup.test_accuracy:.2f} ({soup.acc_diff_pt:+.2f} [{soup.acc_diff_pt_low:+.2f}, {soup.acc_diff_pt_high:+.2f}])"
    ensemble = soups[soups.soup == "uniform"].iloc[0]
    row["ensemble"] = (f"{100 * ensemble.ensemble_test_accuracy:.2f} ({ensemble.ensemble_acc_diff_pt:+.2f} "
                       f"[{ensemble.ensemble_acc_diff_pt_low:+.2f}, {ensemble.ensemble_acc_diff_pt_high:+.2f}])")
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="smallft_a", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--work", default=str(ROOT / "results" / "calibration"))
    parser.add_argument("--out", default=None, help="append rows to this JSON-lines file")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores of each experiment")
    parser.add_argument("--root", default=None, help="data.root override")
    parser.add_argument("--screen", action="store_true", help="only best_individual, uniform (and the ensemble), greedy")
    parser.add_argument("--screen-bn", action="store_true", help="--screen, and uniform and greedy with bn: recompute")
    args = parser.parse_args()
    setup_logging(None)
    for name in args.variants.split(","):
        for seed in map(int, args.seeds.split(",")):
            change = {k: v for k, v in VARIANTS[name].items() if k != "_base"}
            user = deep(BASES[VARIANTS[name].get("_base", "fmnist")], {**change, "seed": seed, "soups": SOUPS})
            if args.root:
                user["data"]["root"] = args.root
            start = time.perf_counter()
            recipes = SCREEN_BN if args.screen_bn else SCREEN if args.screen else SOUPS
            soups = experiment(user, Path(args.work) / name / str(seed), recipes, args.cores)
            row = row_of(name, seed, soups, time.perf_counter() - start)
            print("CALIBRATION " + json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
