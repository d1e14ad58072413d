"""The soup job: one recipe of the config, from the runs table to a soup checkpoint, its rows (with the
paired comparison to the best individual) and its trace. Selection on val only; test is reported."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from soupflow.core.batchnorm import BatchNormRefresher
from soupflow.core.evaluate import Evaluator, Scores, scores_from_logits
from soupflow.core.learned import Fit, fit_mixture
from soupflow.core.models import (
    checkpoint_metadata,
    has_batchnorm,
    load_checkpoint,
    save_checkpoint,
    set_threads,
    untrained_state,
)
from soupflow.core.recipes import Ingredient, Kitchen, TraceRow, cook, soupability
from soupflow.core.stats import compare
from soupflow.jobs.context import JobContext
from soupflow.jobs.soup_cache import forget_others, keep, restore, soup_key
from soupflow.plan.catalog import soup_options
from soupflow.plan.params import soup_base
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


#: the name of a run's moving average of its weights as a soup ingredient: ``<run_id>@ema`` (``ingredients: ema``)
EMA_INGREDIENT = "{run_id}@ema"


def _ema_ingredients(rows: pd.DataFrame) -> list[Ingredient]:
    """``ingredients: ema``: the moving average of each usable run that keeps one (``ema_decay``), named
    ``<run_id>@ema`` and ranked by its own val scores (the runs table's ``ema_*`` columns); the usable runs
    without one are left out, and a warning names them."""
    if "ema_file" not in rows.columns:
        raise FileNotFoundError("the runs table names no ema.safetensors: soups with ingredients: ema need runs "
                                "with ema_decay (the workflow then keeps every run's moving average)")
    ok = rows[rows["status"] == "ok"]
    keeping = ok[ok["hp_ema_decay"].notna()] if "hp_ema_decay" in ok.columns else ok.iloc[:0]
    left_out = sorted(set(ok.run_id) - set(keeping.run_id))
    if left_out:
        log.warning("ingredients: ema leaves out %d run(s) without ema_decay: %s", len(left_out), ", ".join(left_out))
    return [Ingredient(EMA_INGREDIENT.format(run_id=row.run_id), Scores(row.ema_val_loss, row.ema_val_accuracy),
                       (lambda p=row.ema_file: load_checkpoint(p)))
            for row in keeping.itertuples()]


class CachedLogits:
    """The runs' cached val/test logits (their fine-tune jobs' outputs files, each split read once) and their
    means: the logit ensemble of a soup's ingredients (k forward passes at inference). A run's moving average
    (``<run_id>@ema``) has its own logits in the run's outputs file (``ema_val_logits``, ``ema_test_logits``)."""

    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs = outputs  # run id → its outputs file
        self._read: dict[tuple[str, str], torch.Tensor] = {}

    @staticmethod
    def _source(name: str) -> tuple[str, str]:
        """(run id, what of it): "" for the run's weights, "ema" for its moving average, else "epoch<N>"."""
        run_id, _, kind = name.partition("@")
        return run_id, kind

    def cached(self, name: str) -> bool:
        """Whether ``name``'s logits are cached: a run's or its moving average's (not an epoch checkpoint's)."""
        run_id, kind = self._source(name)
        return run_id in self.outputs and kind in ("", "ema")

    def of(self, name: str, split: str) -> torch.Tensor:
        if (name, split) not in self._read:
            run_id, kind = self._source(name)
            with open_safetensors(self.outputs[run_id]) as handle:
                self._read[name, split] = handle.get_tensor(f"{kind}_{split}_logits" if kind else f"{split}_logits")
        return self._read[name, split]

    def mean(self, names: list[str], split: str) -> torch.Tensor | None:
        """None when an ingredient has no cached outputs (an epoch checkpoint) or there is none."""
        if not names or not all(self.cached(n) for n in names):
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
                                   pipeline_seed(context.config, 0), context.bn_batch_size())
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
    row.update(inputs.pantry.ensemble_columns(soup.ingredients, ensemble["test"]))
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


class Pantry:
    """What every soup of one pipeline shares in its job: the data and device, the runs table, the runs'
    cached logits, val and test evaluators (val walked hardest first), the best individual's test logits, and
    per BatchNorm option its state transform and its memo of scored ingredient sets. One job cooks every soup
    of the config on it: each pays for what only it computes, and a set of ingredients two recipes try (the
    best two: the pre-check, greedy's second step, top-2; all: uniform, pruned's start) is scored once."""

    def __init__(self, config: dict[str, Any], data: str, runs: str, threads: int = 1) -> None:
        self.context = JobContext.open(config, data, threads)
        self.runs = pd.read_parquet(runs)
        self.logits = CachedLogits(dict(zip(self.runs.run_id, self.runs.outputs_file)))
        self.evaluators = {split: self.context.evaluator(split) for split in ("val", "test")}
        self.final = usable_ingredients(self.runs)
        # Selection walks val hardest first (a candidate's errors come first: early rejection stops sooner).
        self.evaluators["val"].order_hardest_first([self.logits.of(i.name, "val") for i in self.final])
        best = best_run(self.runs)  # every soup is compared with it on test
        self.reference = self.logits.of(best.run_id, "test") if best is not None else None
        self._finishers: dict[tuple, Callable] = {}
        self._memos: dict[tuple, tuple[dict, dict]] = {}
        self._observed: dict[tuple, Scores] = {}  # test figures of trace rows, by BatchNorm option and set
        self._ensembles: dict[tuple, dict[str, Any]] = {}  # ensemble comparison columns, by ingredient set
        self._checks: dict[tuple, Any] = {}
        self._tested: list[tuple[dict, torch.Tensor]] = []  # the last states scored on test, with their logits
        self._ema: list[Ingredient] | None = None  # the runs' moving averages (ingredients: ema), when asked

    @staticmethod
    def _finishing(options: dict[str, Any]) -> tuple:
        return (options["bn"], int(options["bn_images"])) if options["bn"] == "recompute" else ("keep",)

    def finish(self, options: dict[str, Any]) -> Callable:
        """The state transform soups of this BatchNorm option are scored and saved with (built once)."""
        key = self._finishing(options)
        if key not in self._finishers:
            self._finishers[key] = _refresher(self.context, options)
        return self._finishers[key]

    def memo(self, options: dict[str, Any]) -> dict[str, dict]:
        """The val scores (and stopped passes) of ingredient sets under this BatchNorm option, shared by the
        kitchens of every recipe that scores with it."""
        scored, missed = self._memos.setdefault(self._finishing(options), ({}, {}))
        return {"scored": scored, "missed": missed}

    def ingredients(self, options: dict[str, Any]) -> list[Ingredient]:
        """The candidates of a soup entry's ``ingredients``: the runs' final weights, with their kept epochs
        too, or the runs' moving averages (built once per job)."""
        if options["ingredients"] == "epochs":
            return _epoch_ingredients(self.final, self.runs)
        if options["ingredients"] == "ema":
            if self._ema is None:
                self._ema = _ema_ingredients(self.runs)
            return self._ema
        return self.final

    def test_logits(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Test logits of ``state``, reusing those of the last two states scored when it equals one (a recipe's
        final trace row and the served soup are the same weights: one test pass, not two)."""
        for kept, logits in self._tested:
            if kept is state or (kept.keys() == state.keys() and all(torch.equal(kept[k], state[k]) for k in state)):
                return logits
        logits = self.evaluators["test"].logits(state)
        self._tested = [(state, logits), *self._tested[:1]]
        return logits

    def observed(self, options: dict[str, Any], names: list[str] | None, state: dict[str, torch.Tensor]) -> Scores:
        """The test figures of a trace row's ``state``, the plain mean of the ingredients ``names`` (None: any
        other state). Reporting only, so a set is scored once per job like the val memo (the uniform start of
        every pruned pass, a greedy prefix another order reached, a pass that removed nothing), and one run
        under kept statistics is its own cached test logits. Other states: one test pass each."""
        labels = self.evaluators["test"].labels
        key = (self._finishing(options), tuple(sorted(names))) if names else None
        if key in self._observed:
            return self._observed[key]
        cached = self.logits.mean(list(names), "test") if names and len(names) == 1 and key[0] == ("keep",) else None
        scores = scores_from_logits(cached if cached is not None else self.test_logits(self.finish(options)(state)),
                                    labels)
        if key is not None:
            self._observed[key] = scores
        return scores

    def ensemble_columns(self, names: list[str], logits: torch.Tensor | None) -> dict[str, Any]:
        """The logit ensemble of ``names`` (its ``logits`` on test) against the best individual, as row columns:
        once per ingredient set (uniform, uniform_bn, model_stock and learned share all the runs)."""
        key = tuple(sorted(names))
        if key not in self._ensembles:
            self._ensembles[key] = _paired_columns(logits, self.reference, self.evaluators["test"].labels, "ensemble_")
        return self._ensembles[key]

    def precheck(self, options: dict[str, Any]):
        """The soupability pre-check, once per candidate pool and train sample: the midpoint of the two best
        candidates with averaged BatchNorm statistics and, for a BatchNorm model, re-estimated on the entry's
        ``bn_images`` (a keep entry's: the default sample). Each val pass lands in its option's memo, so the
        greedy step or top-2 soup that scores the same set under that option reuses it."""
        recompute = {**options, "bn": "recompute"}
        key = (options["ingredients"], self._finishing(recompute))
        if key not in self._checks:
            averaged = self._selector({**options, "bn": "keep"})
            recomputed = self._selector(recompute) if has_batchnorm(self.evaluators["val"].model) else None
            self._checks[key] = _precheck(averaged, recomputed, self.context.data.num_classes)
        return self._checks[key]

    def _selector(self, options: dict[str, Any]) -> Kitchen:
        """A kitchen that only scores on val under ``options``' BatchNorm option, with that option's memo."""
        finish, val = self.finish(options), self.evaluators["val"]
        return Kitchen(self.ingredients(options), lambda state: val.select(finish(state)), **self.memo(options))


@dataclass(frozen=True)
class SoupInputs:
    """What one soup entry is cooked with: the pantry its job shares, its entry as written (``entry``) and
    with every option at its default (``options``), and its candidate ingredients."""

    pantry: Pantry
    entry: dict[str, Any]
    options: dict[str, Any]
    ingredients: list[Ingredient]

    @classmethod
    def of(cls, pantry: Pantry, entry: dict[str, Any]) -> "SoupInputs":
        options = soup_options(entry)
        return cls(pantry, entry, options, pantry.ingredients(options))

    @property
    def context(self) -> JobContext:
        return self.pantry.context

    @property
    def evaluators(self) -> dict[str, Evaluator]:
        return self.pantry.evaluators

    @property
    def logits(self) -> CachedLogits:
        return self.pantry.logits

    @property
    def reference(self) -> torch.Tensor | None:
        return self.pantry.reference

    @property
    def labels(self) -> dict[str, torch.Tensor]:
        return {split: evaluator.labels for split, evaluator in self.evaluators.items()}


def _kitchen(inputs: SoupInputs, paths: SoupPaths):
    """What a recipe works with: ingredients, val scoring (after the soup's BatchNorm option), test reporting."""

    context, options, evaluators = inputs.context, inputs.options, inputs.evaluators
    finish = inputs.pantry.finish(options)

    def observe(row: TraceRow, state: dict[str, torch.Tensor], names: list[str] | None = None) -> None:
        scores = inputs.pantry.observed(options, names, state)  # reporting only
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
                   bounded=bounded, learn=learn, **inputs.pantry.memo(options)), finish


def _check_columns(check) -> dict[str, Any]:
    """The soupability pre-check as columns of every soup row: the midpoint with averaged BatchNorm statistics
    (``precheck_midpoint_val_accuracy``, ``soupability``) and re-estimated ones (``…_recompute``; NaN and n/a
    for a model without BatchNorm)."""
    nan = float("nan")
    if check is None:
        return {"precheck_midpoint_val_accuracy": nan, "precheck_pair_val_accuracy": nan, "soupability": "n/a",
                "precheck_midpoint_recompute_val_accuracy": nan, "soupability_recompute": "n/a"}
    fresh = check.recomputed_accuracy
    return {"precheck_midpoint_val_accuracy": check.midpoint_accuracy,
            "precheck_pair_val_accuracy": check.worse_accuracy, "soupability": check.verdict,
            "precheck_midpoint_recompute_val_accuracy": nan if fresh is None else fresh,
            "soupability_recompute": check.recomputed_verdict or "n/a"}


def _precheck(averaged: Kitchen, recomputed: Kitchen | None, num_classes: int):
    """The soupability pre-check (midpoint of the two best runs on val, with averaged and, where given,
    re-estimated BatchNorm statistics), with a warning and its advice when it does not hold as averaged."""
    check = soupability(averaged, 1.0 / num_classes, recomputed)
    if check is not None and check.advice:
        fresh = "" if check.recomputed_verdict is None else \
            f", {check.recomputed_accuracy:.4f} with re-estimated ones ({check.recomputed_verdict})"
        log.warning("soupability: the midpoint of the two best runs scores %.4f on val with averaged BatchNorm "
                    "statistics (%s)%s, against %.4f: %s", check.midpoint_accuracy, check.verdict, fresh,
                    check.worse_accuracy, check.advice)
    return check


def _served(name: str, inputs: SoupInputs, soups: list, finish, check) -> tuple[list[dict], list[dict], tuple]:
    """Each cooked soup (one per repeat) scored on test with its comparisons: its row, its trace rows; and the
    soup that the job saves, the best on val: (soup, final state, its test logits)."""
    rows, traces, chosen = [], [], None
    labels = inputs.labels
    for soup in soups:
        averaged = soup.state()
        state = finish(averaged)
        test_logits = {"soup": inputs.pantry.test_logits(state), "reference": inputs.reference}
        if state is not averaged:  # bn: recompute — the same weights with averaged statistics, for comparison
            test_logits["bn_kept"] = inputs.pantry.test_logits(averaged)
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


def _cook_entry(pantry: Pantry, name: str, entry: dict[str, Any], paths: SoupPaths) -> pd.DataFrame:
    """Cook one soup entry on the pantry: select on val, report on test with a paired comparison to the best
    individual; write the chosen soup, its test outputs, its rows and its trace."""
    began, scored_before = time.perf_counter(), pantry.evaluators["val"].images_scored
    inputs = SoupInputs.of(pantry, entry)
    options, config = inputs.options, pantry.context.config
    kitchen, finish = _kitchen(inputs, paths)
    log.info("soup %s (%s, bn %s): %d candidate ingredients", name, options["recipe"], options["bn"],
             len(inputs.ingredients))
    check = pantry.precheck(options)
    rows, traces, (soup, state, test_logits) = _served(name, inputs, cook(options["recipe"], kitchen, options), finish, check)
    seconds = time.perf_counter() - began
    for row in rows:
        row["seconds"] = seconds / len(rows)
        row["val_images_scored"] = pantry.evaluators["val"].images_scored - scored_before  # this soup's selection work
        row["val_images_per_pass"] = len(inputs.labels["val"])
    table = typed_table(rows, SOUP_SCHEMA)
    meta = checkpoint_metadata(config["model"], pantry.context.data, soup=name, recipe=options["recipe"],
                               bn=options["bn"], ingredients=json.dumps(soup.ingredients))
    save_checkpoint(state, paths.model, meta)
    # the saved soup's test predictions: what pooling over replicates compares (rule pooled), no model rerun
    atomic_save_safetensors({"test_logits": test_logits.float().cpu(), "test_labels": inputs.labels["test"].cpu()},
                            paths.outputs, {"soup": name, "recipe": options["recipe"]})
    atomic_write_parquet(table, paths.metrics)
    atomic_write_parquet(typed_table(traces, TRACE_SCHEMA), paths.trace)
    _log_rows(name, rows, seconds)
    return table.to_pandas()


def make_soup(config: dict[str, Any], name: str, entry: dict[str, Any], paths: SoupPaths, threads: int = 1) -> pd.DataFrame:
    """Cook one soup entry of the config, alone in its process (the calibration harness, the benchmarks)."""
    set_threads(threads)
    return _cook_entry(Pantry(config, paths.data, paths.runs, threads), name, entry, paths)


def cooking_order(entries: dict[str, dict[str, Any]]) -> list[str]:
    """Soups that take no base first (in the config's order), then those that interpolate toward one."""
    return sorted(entries, key=lambda name: soup_base(entries[name]) is not None)


def make_soups(config: dict[str, Any], entries: dict[str, dict[str, Any]], paths: dict[str, SoupPaths],
               threads: int = 1, cache: str | None = None) -> pd.DataFrame:
    """Cook every soup entry of one pipeline in one process, on one pantry (the soup rule's job). With
    ``cache`` (a folder), a soup whose entry and inputs are those of an earlier job is restored from it instead
    of cooked again: editing one entry recooks that soup and the soups built on it, nothing else."""
    set_threads(threads)
    began = time.perf_counter()
    pantry, keys, frames = None, {}, []
    for name in cooking_order(entries):
        keys[name] = soup_key(config, entries[name], paths[name], keys.get(soup_base(entries[name]) or ""))
        if cache and restore(cache, keys[name], paths[name]):
            log.info("soup %s: unchanged since an earlier job, restored from %s", name, cache)
            frames.append(pd.read_parquet(paths[name].metrics))
            continue
        pantry = pantry or Pantry(config, paths[name].data, paths[name].runs, threads)
        frames.append(_cook_entry(pantry, name, entries[name], paths[name]))
        if cache:
            keep(cache, keys[name], paths[name])
    if cache:
        forget_others(cache, set(keys.values()))
    log.info("%d soups in %.0f s", len(entries), time.perf_counter() - began)
    return pd.concat(frames, ignore_index=True)
