"""The soup job: one recipe of the config, from the runs table to a soup checkpoint, its rows (with the
paired comparison to the best individual) and its trace. Selection on val only; test is reported."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from soupflow.core.batchnorm import BatchNormRefresher, has_batchnorm
from soupflow.core.evaluate import Evaluator, Scores, scores_from_logits
from soupflow.core.learned import Fit, fit_mixture
from soupflow.core.models import checkpoint_metadata, load_checkpoint, save_checkpoint, set_threads, untrained_state
from soupflow.core.recipes import Ingredient, Kitchen, TraceRow, cook, soupability
from soupflow.core.stats import compare
from soupflow.jobs.context import JobContext
from soupflow.plan.catalog import soup_options
from soupflow.plan.seeds import pipeline_seed
from soupflow.store.io import atomic_save_safetensors, atomic_write_parquet, open_safetensors
from soupflow.store.tables import SOUP_SCHEMA, TRACE_SCHEMA, best_run, typed_table

log = logging.getLogger("soupflow")


def usable_ingredients(rows: pd.DataFrame) -> list[Ingredient]:
    """The usable runs (status ok) of a runs table as soup ingredients, weights loaded lazily from the
    checkpoint the table names (``model_file``)."""

    for row in rows[rows["status"] != "ok"].itertuples():
        log.warning("leaving %s out of soups: status %s", row.run_id, row.status)
    return [Ingredient(row.run_id, Scores(row.val_loss, row.val_accuracy),
                       (lambda p=row.model_file: load_checkpoint(p)))
            for row in rows[rows["status"] == "ok"].itertuples()]


def _epoch_ingredients(ingredients: list[Ingredient], rows: pd.DataFrame) -> list[Ingredient]:
    """``ingredients: epochs``: each usable run's kept epoch checkpoints (the table its ``epochs_file`` names)
    as candidates too, named ``<run_id>@epoch<N>`` (within-run and across-run soups in one pool)."""

    if "epochs_file" not in rows.columns:
        raise FileNotFoundError("the runs table names no epochs.parquet: soups with ingredients: epochs need the "
                                "runs to keep their epoch checkpoints (the workflow does so when a soup asks for it)")
    tables = dict(zip(rows.run_id, rows.epochs_file))
    extra = []
    for ingredient in ingredients:
        folder = Path(tables[ingredient.name]).parent  # the table lists its checkpoints relative to itself
        for row in pd.read_parquet(tables[ingredient.name]).itertuples():
            extra.append(Ingredient(f"{ingredient.name}@epoch{row.epoch}", Scores(row.val_loss, row.val_accuracy),
                                    (lambda p=str(folder / row.path): load_checkpoint(p))))
    return ingredients + extra


class CachedLogits:
    """The runs' cached val/test logits (their fine-tune jobs' outputs files, each split read once) and their
    means: the logit ensemble of a soup's ingredients (k forward passes at inference)."""

    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs = outputs  # run id → its outputs file
        self._read: dict[tuple[str, str], torch.Tensor] = {}

    def of(self, name: str, split: str) -> torch.Tensor:
        if (name, split) not in self._read:
            with open_safetensors(self.outputs[name]) as handle:
                self._read[name, split] = handle.get_tensor(f"{split}_logits")
        return self._read[name, split]

    def mean(self, names: list[str], split: str) -> torch.Tensor | None:
        """None when an ingredient has no cached outputs (an epoch checkpoint) or there is none."""
        if not names or any(n not in self.outputs for n in names):
            return None
        total = self.of(names[0], split)
        for name in names[1:]:
            total = total + self.of(name, split)
        return total / len(names)


def _refresher(context: JobContext, options: dict[str, Any]):
    """The state transform a soup is scored and saved with: identity, or BatchNorm re-estimated on train."""
    keep = lambda state: state  # noqa: E731
    if options["bn"] != "recompute":
        return keep
    model = context.model()
    if not has_batchnorm(model):
        log.info("bn: recompute has nothing to do: %s has no BatchNorm layer", context.config["model"]["name"])
        return keep
    refresher = BatchNormRefresher(model, context.data, context.device, int(options["bn_images"]),
                                   pipeline_seed(context.config, 0))
    log.info("BatchNorm statistics of every scored soup re-estimated on %d train images", refresher.images.shape[0])
    return refresher.refresh


def _paired_columns(logits: torch.Tensor | None, reference: torch.Tensor | None, labels: torch.Tensor,
                    prefix: str) -> dict[str, Any]:
    """``logits`` against ``reference`` on the same test images (interval, McNemar p, wins), as row columns."""
    if logits is None or reference is None:
        return {}
    comparison = compare(logits, reference, labels)
    return {**comparison.columns(prefix), f"{prefix}wins": comparison.wins}


def _soup_row(name: str, inputs: SoupInputs, soup, test_logits: dict[str, torch.Tensor | None],
              ensemble: dict[str, torch.Tensor | None]) -> dict[str, Any]:
    """One row of soups.parquet. ``test_logits`` holds the soup's (``soup``), the best individual's
    (``reference``) and, with ``bn: recompute``, the same weights' with averaged statistics (``bn_kept``): the
    soup and the logit ensemble of its ingredients are compared with the best individual, and re-estimated
    BatchNorm statistics with averaged ones."""
    options, labels, n_candidates = inputs.options, inputs.labels, len(inputs.ingredients)
    test = scores_from_logits(test_logits["soup"], labels["test"])
    nan = float("nan")
    row = {"soup": name, "recipe": options["recipe"], "metric": options["metric"],
           "bn": options["bn"], "repeat": soup.repeat, "ingredients": list(soup.ingredients),
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
                "options": json.dumps({k: v for k, v in inputs.entry.items() if k not in {"name", "recipe"}},
                                      sort_keys=True)})
    return row


@dataclass(frozen=True)
class SoupPaths:
    """Every file one soup job reads and writes, as the soup rule names them. ``init`` (the weights the
    fine-tunes began from) and ``base`` (another soup's checkpoint) only for the recipes that use them."""

    data: str
    runs: str  # the runs table: every run's metrics and the paths of its files
    model: str
    metrics: str
    trace: str
    outputs: str  # the saved soup's test logits and labels
    init: str | None = None
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


@dataclass(frozen=True)
class SoupInputs:
    """What one soup job works with: the job's context, its soup entry as written (``entry``) and with every
    option at its default (``options``), evaluators of val and test, the candidate ingredients, their cached
    logits, and the best individual's test logits (the reference)."""

    context: JobContext
    entry: dict[str, Any]
    options: dict[str, Any]
    evaluators: dict[str, Evaluator]
    ingredients: list[Ingredient]
    logits: CachedLogits
    reference: torch.Tensor | None

    @classmethod
    def load(cls, config: dict[str, Any], entry: dict[str, Any], paths: SoupPaths, threads: int = 1) -> "SoupInputs":
        context = JobContext.open(config, paths.data, threads)
        runs, options = pd.read_parquet(paths.runs), soup_options(entry)
        ingredients = usable_ingredients(runs)
        if options["ingredients"] == "epochs":
            ingredients = _epoch_ingredients(ingredients, runs)
        logits = CachedLogits(dict(zip(runs.run_id, runs.outputs_file)))
        evaluators = {split: context.evaluator(split) for split in ("val", "test")}
        best = best_run(runs)  # every soup is compared with it on test
        # Selection walks val hardest first (a candidate's errors come first: early rejection stops sooner).
        evaluators["val"].order_hardest_first([logits.of(i.name, "val") for i in ingredients if i.name in logits.outputs])
        return cls(context, entry, options, evaluators, ingredients, logits,
                   logits.of(best.run_id, "test") if best is not None else None)

    @property
    def labels(self) -> dict[str, torch.Tensor]:
        return {split: evaluator.labels for split, evaluator in self.evaluators.items()}


def _kitchen(inputs: SoupInputs, paths: SoupPaths):
    """What a recipe works with: ingredients, val scoring (after the soup's BatchNorm option), test reporting."""

    context, options, evaluators = inputs.context, inputs.options, inputs.evaluators
    finish = _refresher(context, options)

    def observe(row: TraceRow, state: dict[str, torch.Tensor]) -> None:
        scores = evaluators["test"].scores(finish(state))  # reporting only: the recipe never reads these
        row.test_accuracy, row.test_loss = scores.accuracy, scores.loss

    val = evaluators["val"]
    bounded = (lambda state, bar, resume: val.select(finish(state), bar, resume)) \
        if options["early_rejection"] else None

    def learn(states, options):
        fit = Fit(**{key: options[key] for key in ("epochs", "lr", "batch_size", "seed", "granularity")})
        return fit_mixture(val.model, states, context.data, "val", context.device, fit)

    return Kitchen(inputs.ingredients, lambda state: val.select(finish(state)),
                   lambda seed: untrained_state(context.data, context.config["model"], seed), observe,
                   init=(lambda: load_checkpoint(paths.init)) if paths.init else None,
                   base=_base_soup(paths.base), buffers=frozenset(name for name, _ in val.model.named_buffers()),
                   bounded=bounded, learn=learn), finish


def _check_columns(check) -> dict[str, Any]:
    """The soupability pre-check as columns of every soup row."""
    if check is None:
        return {"precheck_midpoint_val_accuracy": float("nan"), "precheck_pair_val_accuracy": float("nan"),
                "soupability": "n/a"}
    return {"precheck_midpoint_val_accuracy": check.midpoint_accuracy,
            "precheck_pair_val_accuracy": check.worse_accuracy, "soupability": check.verdict}


def _precheck(kitchen: Kitchen, num_classes: int):
    """The soupability pre-check (midpoint of the two best runs on val), with a warning when it fails."""
    check = soupability(kitchen, 1.0 / num_classes)
    if check is not None and check.verdict != "ok":
        log.warning("soupability: the midpoint of the two best runs scores %.4f on val against %.4f (%s); "
                    "see bn: recompute and `snakemake analysis`", check.midpoint_accuracy, check.worse_accuracy,
                    check.verdict)
    return check


def _served(name: str, inputs: SoupInputs, soups: list, finish, check) -> tuple[list[dict], list[dict], tuple]:
    """Each cooked soup (one per repeat) scored on test with its comparisons: its row, its trace rows; and the
    soup that the job saves, the best on val: (soup, final state, its test logits)."""
    rows, traces, chosen = [], [], None
    test, labels = inputs.evaluators["test"], inputs.labels
    for soup in soups:
        averaged = soup.state()
        state = finish(averaged)
        test_logits = {"soup": test.logits(state), "reference": inputs.reference}
        if state is not averaged:  # bn: recompute — the same weights with averaged statistics, for comparison
            test_logits["bn_kept"] = test.logits(averaged)
        ensemble = {s: inputs.logits.mean(soup.ingredients, s) for s in labels}
        row = _soup_row(name, inputs, soup, test_logits, ensemble)
        rows.append(row | _check_columns(check))
        traces += [{"soup": name, "recipe": inputs.options["recipe"], **r.columns()} for r in soup.trace]
        if chosen is None or soup.val.value(row["metric"]) > chosen[0].val.value(row["metric"]):
            chosen = (soup, state, test_logits["soup"])
    return rows, traces, chosen


def _log_rows(name: str, rows: list[dict[str, Any]], seconds: float) -> None:
    for row in rows:
        versus = f", vs best {row['acc_diff_pt']:+.2f} pt [{row['acc_diff_pt_low']:+.2f}, {row['acc_diff_pt_high']:+.2f}]" \
            if "acc_diff_pt" in row else ""
        log.info("soup %s%s: %d ingredients, val %.4f, test %.4f%s (%.0f s)", name,
                 f" repeat {row['repeat']}" if len(rows) > 1 else "", row["n_ingredients"], row["val_accuracy"],
                 row["test_accuracy"], versus, seconds)


def make_soup(config: dict[str, Any], name: str, entry: dict[str, Any], paths: SoupPaths, threads: int = 1) -> pd.DataFrame:
    """Cook one soup entry of the config from the fine-tuned runs listed in the runs table; select on val,
    report on test with a paired comparison to the best individual; write the chosen soup, its rows, its trace."""

    set_threads(threads)
    began = time.perf_counter()
    inputs = SoupInputs.load(config, entry, paths, threads)
    options = inputs.options
    kitchen, finish = _kitchen(inputs, paths)
    log.info("soup %s (%s, bn %s): %d candidate ingredients", name, options["recipe"], options["bn"],
             len(inputs.ingredients))
    check = _precheck(kitchen, inputs.context.data.num_classes)
    rows, traces, (soup, state, test_logits) = _served(name, inputs, cook(options["recipe"], kitchen, options), finish, check)
    seconds = time.perf_counter() - began
    for row in rows:
        row["seconds"] = seconds / len(rows)
        row["val_images_scored"] = inputs.evaluators["val"].images_scored  # the whole job's selection work
        row["val_images_per_pass"] = len(inputs.labels["val"])
    table = typed_table(rows, SOUP_SCHEMA)
    meta = checkpoint_metadata(config["model"], inputs.context.data, soup=name, recipe=options["recipe"],
                               bn=options["bn"], ingredients=json.dumps(soup.ingredients))
    save_checkpoint(state, paths.model, meta)
    # the saved soup's test predictions: what pooling over replicates compares (rule pooled), no model rerun
    atomic_save_safetensors({"test_logits": test_logits.float().cpu(), "test_labels": inputs.labels["test"].cpu()},
                            paths.outputs, {"soup": name, "recipe": options["recipe"]})
    atomic_write_parquet(table, paths.metrics)
    atomic_write_parquet(typed_table(traces, TRACE_SCHEMA), paths.trace)
    _log_rows(name, rows, seconds)
    return table.to_pandas()
