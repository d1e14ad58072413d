"""The soup job: one recipe of the config, from the runs table to a soup checkpoint, its rows (with the
paired comparison to the best individual) and its trace. Selection on val only; test is reported."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from soupflow.batchnorm import BatchNormRefresher, has_batchnorm
from soupflow.config import pipeline_seed
from soupflow.data import PreparedData
from soupflow.evaluate import Evaluator, Scores, scores_from_logits
from soupflow.io import atomic_write_parquet, open_safetensors
from soupflow.jobs import checkpoint_metadata, log, model_for, untrained_state
from soupflow.learned import Fit, fit_mixture
from soupflow.models import load_checkpoint, pick_device, save_checkpoint, set_threads
from soupflow.recipes import Ingredient, Kitchen, cook, soupability
from soupflow.stats import compare
from soupflow.summary import best_individual
from soupflow.tables import SOUP_SCHEMA, TRACE_SCHEMA, typed_table


def usable_ingredients(rows: pd.DataFrame, run_dirs: list[str]):
    """The usable runs (status ok) of a runs table as soup ingredients, weights loaded lazily from their folders."""

    usable = rows[rows["status"] == "ok"]
    left_out = rows[rows["status"] != "ok"]
    for _, row in left_out.iterrows():
        log.warning("leaving %s out of soups: status %s", row["run_id"], row["status"])
    by_id = {Path(d).name: d for d in run_dirs}
    return [Ingredient(row.run_id, Scores(row.val_loss, row.val_accuracy),
                       (lambda p=str(Path(by_id[row.run_id]) / "model.safetensors"): load_checkpoint(p)))
            for row in usable.itertuples()], by_id


def _epoch_ingredients(ingredients: list, by_id: dict[str, str]) -> list:
    """``ingredients: epochs``: each usable run's kept epoch checkpoints (``epochs.parquet``) as candidates
    too, named ``<run_id>@epoch<N>`` (within-run and across-run soups in one pool)."""

    extra = []
    for ingredient in ingredients:
        folder = Path(by_id[ingredient.name])
        if not (folder / "epochs.parquet").exists():
            raise FileNotFoundError(f"{folder}/epochs.parquet: soups with ingredients: epochs need the runs to keep "
                                    "their epoch checkpoints (the workflow does so when a soup asks for it)")
        for row in pd.read_parquet(folder / "epochs.parquet").itertuples():
            extra.append(Ingredient(f"{ingredient.name}@epoch{row.epoch}", Scores(row.val_loss, row.val_accuracy),
                                    (lambda p=str(folder / row.path): load_checkpoint(p))))
    return ingredients + extra


def _cached_logits(names: list[str], by_id: dict[str, str], split: str) -> torch.Tensor | None:
    """Mean of the ingredients' cached logits: the logit ensemble (k forward passes at inference)."""
    if not names or any(n not in by_id for n in names):
        return None
    total = None
    for name in names:
        with open_safetensors(Path(by_id[name]) / "outputs.safetensors") as handle:
            logits = handle.get_tensor(f"{split}_logits")
        total = logits if total is None else total + logits
    return total / len(names)


def _refresher(config: dict[str, Any], spec: dict[str, Any], data: PreparedData, device: torch.device):
    """The state transform a soup is scored and saved with: identity, or BatchNorm re-estimated on train."""
    keep = lambda state: state  # noqa: E731
    if spec.get("bn", "keep") != "recompute":
        return keep
    model = model_for(data, config["model"])
    if not has_batchnorm(model):
        log.info("bn: recompute has nothing to do: %s has no BatchNorm layer", config["model"]["name"])
        return keep
    refresher = BatchNormRefresher(model, data, device, int(spec.get("bn_images", 2000)), pipeline_seed(config, 0))
    log.info("BatchNorm statistics of every scored soup re-estimated on %d train images", refresher.images.shape[0])
    return refresher.refresh


def _paired_columns(logits: torch.Tensor | None, reference: torch.Tensor | None, labels: torch.Tensor,
                    prefix: str) -> dict[str, Any]:
    """``logits`` against ``reference`` on the same test images (interval, McNemar p, wins), as row columns."""
    if logits is None or reference is None:
        return {}
    comparison = compare(logits, reference, labels)
    return {**comparison.columns(prefix), f"{prefix}wins": comparison.wins}


def _soup_row(name: str, spec: dict[str, Any], soup, n_candidates: int, test_logits: dict[str, torch.Tensor | None],
              ensemble: dict[str, torch.Tensor | None], labels: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One row of soups.parquet. ``test_logits`` holds the soup's (``soup``), the best individual's
    (``reference``) and, with ``bn: recompute``, the same weights' with averaged statistics (``bn_kept``): the
    soup and the logit ensemble of its ingredients are compared with the best individual, and re-estimated
    BatchNorm statistics with averaged ones."""
    test = scores_from_logits(test_logits["soup"], labels["test"])
    nan = float("nan")
    row = {"soup": name, "recipe": spec["recipe"], "metric": spec.get("metric", "accuracy"),
           "bn": spec.get("bn", "keep"), "repeat": soup.repeat, "ingredients": list(soup.ingredients),
           "n_ingredients": len(soup.ingredients), "n_candidates": n_candidates,
           "val_accuracy": soup.val.accuracy, "val_loss": soup.val.loss,
           "test_accuracy": test.accuracy, "test_loss": test.loss}
    ens = {s: scores_from_logits(ensemble[s], labels[s]) if ensemble[s] is not None else None for s in ensemble}
    row.update({"ensemble_val_accuracy": ens["val"].accuracy if ens["val"] else nan,
                "ensemble_test_accuracy": ens["test"].accuracy if ens["test"] else nan,
                "ensemble_test_loss": ens["test"].loss if ens["test"] else nan})
    row.update(_paired_columns(test_logits["soup"], test_logits["reference"], labels["test"], ""))
    row.update(_paired_columns(ensemble["test"], test_logits["reference"], labels["test"], "ensemble_"))
    row.update(_paired_columns(test_logits["soup"], test_logits.get("bn_kept"), labels["test"], "bn_"))
    row.update({"inference_passes_soup": 1, "inference_passes_ensemble": len(soup.ingredients),
                "selection_passes": soup.selection_passes,
                "options": json.dumps({k: v for k, v in spec.items() if k not in {"name", "recipe"}}, sort_keys=True)})
    return row


@dataclass(frozen=True)
class SoupPaths:
    """Every file one soup job reads and writes, as the soup rule names them. ``start`` (the init the
    fine-tunes began from) and ``base`` (another soup's checkpoint) only for the recipes that use them."""

    data: str
    runs: str  # the runs table; run folders are ``runs_folder/<run_id>``
    runs_folder: str
    model: str
    metrics: str
    trace: str
    start: str | None = None
    base: str | None = None


def _base_soup(path: str | None):
    """A loader of another soup's checkpoint: its ingredient names (from the header) and its weights."""
    if path is None:
        return None

    def load() -> tuple[list[str], dict[str, torch.Tensor]]:
        with open_safetensors(path) as handle:
            names = json.loads((handle.metadata() or {}).get("ingredients", "[]"))
        return names, load_checkpoint(path)
    return load


def _kitchen(config, spec, paths: SoupPaths, data: PreparedData, evaluators: dict[str, Evaluator], ingredients):
    """What a recipe works with: ingredients, val scoring (after the soup's BatchNorm option), test reporting."""

    finish = _refresher(config, spec, data, evaluators["val"].device)

    def observe(row: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        scores = evaluators["test"].scores(finish(state))  # reporting only: the recipe never reads these
        row["test_accuracy"], row["test_loss"] = scores.accuracy, scores.loss

    val = evaluators["val"]
    bounded = (lambda state, bar, resume: val.select(finish(state), bar, resume)) \
        if spec.get("early_rejection", True) else None

    def learn(states, options):
        fit = Fit(**{key: options[key] for key in ("epochs", "lr", "batch_size", "seed", "granularity") if key in options})
        return fit_mixture(val.model, states, val.images, val.labels, data.normalise, fit)

    return Kitchen(ingredients, lambda state: val.select(finish(state)),
                   lambda seed: untrained_state(data, config["model"], seed), observe,
                   start=(lambda: load_checkpoint(paths.start)) if paths.start else None,
                   base=_base_soup(paths.base), buffers=frozenset(name for name, _ in val.model.named_buffers()),
                   bounded=bounded, learn=learn), finish


def _check_columns(check) -> dict[str, Any]:
    """The soupability pre-check as columns of every soup row."""
    if check is None:
        return {"precheck_midpoint_val_accuracy": float("nan"), "precheck_pair_val_accuracy": float("nan"),
                "soupability": "n/a"}
    return {"precheck_midpoint_val_accuracy": check.midpoint_accuracy,
            "precheck_pair_val_accuracy": check.worse_accuracy, "soupability": check.verdict}


def make_soup(config: dict[str, Any], name: str, spec: dict[str, Any], paths: SoupPaths, threads: int = 1) -> pd.DataFrame:
    """Cook one soup recipe from the fine-tuned runs listed in the runs table; select on val, report on test
    with a paired comparison to the best individual; write the chosen soup, its rows and its trace."""

    set_threads(threads)
    start = time.perf_counter()
    data = PreparedData(paths.data)
    device = pick_device(config["evaluation"]["device"])
    runs = pd.read_parquet(paths.runs)
    ingredients, by_id = usable_ingredients(runs, [str(Path(paths.runs_folder) / run_id) for run_id in runs.run_id])
    if spec.get("ingredients", "final") == "epochs":
        ingredients = _epoch_ingredients(ingredients, by_id)
    evaluators = {split: Evaluator(model_for(data, config["model"]), data, split, device,
                                   config["evaluation"]["batch_size"]) for split in ("val", "test")}
    labels = {split: evaluator.labels for split, evaluator in evaluators.items()}
    best = best_individual(runs)  # every soup is compared with it on test
    reference = _cached_logits([best.run_id], by_id, "test") if best is not None else None
    usable = [ingredient.name for ingredient in ingredients if ingredient.name in by_id]  # runs with cached logits
    evaluators["val"].order_hardest_first([_cached_logits([name], by_id, "val") for name in usable])
    kitchen, finish = _kitchen(config, spec, paths, data, evaluators, ingredients)
    log.info("soup %s (%s, bn %s): %d candidate ingredients", name, spec["recipe"], spec.get("bn", "keep"),
             len(ingredients))
    check = soupability(kitchen, 1.0 / data.num_classes)
    if check is not None and check.verdict != "ok":
        log.warning("soupability: the midpoint of the two best runs scores %.4f on val against %.4f (%s); "
                    "see bn: recompute and `snakemake analysis`", check.midpoint_accuracy, check.worse_accuracy,
                    check.verdict)
    soups = cook(spec["recipe"], kitchen, spec)
    rows, traces, chosen = [], [], None
    for soup in soups:
        averaged = soup.state()
        state = finish(averaged)
        test_logits = {"soup": evaluators["test"].logits(state), "reference": reference}
        if state is not averaged:  # bn: recompute — the same weights with averaged statistics, for comparison
            test_logits["bn_kept"] = evaluators["test"].logits(averaged)
        ensemble = {s: _cached_logits(soup.ingredients, by_id, s) for s in labels}
        rows.append(_soup_row(name, spec, soup, len(ingredients), test_logits, ensemble, labels) | _check_columns(check))
        traces += [{"soup": name, "recipe": spec["recipe"], **r} for r in soup.trace]
        if chosen is None or soup.val.value(rows[-1]["metric"]) > chosen[0].val.value(rows[-1]["metric"]):
            chosen = (soup, state)
    seconds = time.perf_counter() - start
    for row in rows:
        row["seconds"] = seconds / len(rows)
        row["val_images_scored"] = evaluators["val"].images_scored  # the whole job's selection work
        row["val_images_per_pass"] = len(labels["val"])
    table = typed_table(rows, SOUP_SCHEMA)
    meta = checkpoint_metadata(config["model"], data, soup=name, recipe=spec["recipe"], bn=spec.get("bn", "keep"),
                               ingredients=json.dumps(chosen[0].ingredients))
    save_checkpoint(chosen[1], paths.model, meta)
    atomic_write_parquet(table, paths.metrics)
    atomic_write_parquet(typed_table(traces, TRACE_SCHEMA), paths.trace)
    frame = table.to_pandas()
    for row in rows:
        versus = f", vs best {row['acc_diff_pt']:+.2f} pt [{row['acc_diff_pt_low']:+.2f}, {row['acc_diff_pt_high']:+.2f}]" \
            if "acc_diff_pt" in row else ""
        log.info("soup %s%s: %d ingredients, val %.4f, test %.4f%s (%.0f s)", name,
                 f" repeat {row['repeat']}" if len(rows) > 1 else "", row["n_ingredients"], row["val_accuracy"],
                 row["test_accuracy"], versus, seconds)
    return frame
