"""The pair jobs of the soup analysis ("Too Salty"): midpoint soups ½θA + ½θB of pairs of runs with their
gains on val, test and corrupted test and the similarity of the two runs.

A midpoint is scored once per BatchNorm option of ``analysis.bn`` (one row each, column ``bn``): ``keep``, the
running statistics averaged with the weights, and ``recompute``, re-estimated for the midpoint's weights on a
seeded sample of ``analysis.bn_images`` *train* images (``core.batchnorm``, as a soup's ``bn: recompute``). A
model without BatchNorm gets ``keep`` rows only: there is nothing to re-estimate. Averaged statistics alone
would call a BatchNorm model's runs unsoupable where re-estimated ones soup (few-label transfer: the uniform
soup's −12.80 pt against the best run became −0.04 pt with re-estimated statistics).

Every run's test logits and penultimate features come from its fine-tune job (its outputs file) and its
corrupted logits from one job per run (``soupflow.jobs.corrupted``): a pair job only evaluates the soup itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from soupflow.core import analysis
from soupflow.core.average import StateDict, average
from soupflow.core.batchnorm import BATCH as BN_BATCH
from soupflow.core.batchnorm import BatchNormRefresher
from soupflow.core.evaluate import Scores, scores_from_logits
from soupflow.core.models import has_batchnorm, set_threads
from soupflow.core.similarity import flatten, output_similarity, parameter_similarity
from soupflow.jobs.context import JobContext
from soupflow.plan.catalog import CORRUPTED_SPLIT
from soupflow.plan.seeds import pipeline_seed
from soupflow.store.data import TensorData
from soupflow.store.io import (
    atomic_write_parquet,
    atomic_write_text,
    read_safetensors,
    recorded_digest,
)

log = logging.getLogger("soupflow")


@dataclass(frozen=True)
class RunFiles:
    """One run's files as the analysis rules name them: checkpoint, metrics row, cached outputs (val/test
    logits and features) and logits on the corrupted test copy (the last two only for pair jobs)."""

    model: str
    metrics: str
    outputs: str | None = None
    corrupted: str | None = None


@dataclass(frozen=True)
class PairPaths:
    """What a pair job reads besides the runs, and where it writes: the data, the corrupted copy, the init
    checkpoints task vectors are measured from (``{"final": path, "epochs": {epoch: path}}``, the kept
    pretraining epochs), the chunk table, and the folder of per-pair results kept across reruns (None: no cache)."""

    data: str
    corrupted: str
    out: str
    inits: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None


def run_row(metrics_path: str) -> dict[str, Any]:
    """A run's one-row metrics table as a dict."""
    return pd.read_parquet(metrics_path).iloc[0].to_dict()


def shared_epochs(config: dict[str, Any], branch_a: int | None, branch_b: int | None) -> float:
    """Pretraining epochs two runs have in common (None = branched from the end of pretraining)."""
    if config["model"]["init"] != "pretrain":
        return float("nan")
    final = config["pretrain"]["epochs"]
    return float(min(final if branch_a is None else branch_a, final if branch_b is None else branch_b))


def _branch(row: dict[str, Any]) -> int | None:
    value = row.get("hp_branch_epoch")
    return None if value is None or value != value else int(value)


#: Bumped when a pair row's definition changes, so that cached pair results are not reused across it.
PAIR_ROW_VERSION = "2"  # 2: one row per BatchNorm option, column bn


def content_key(*paths: str, digest_of: Callable[[str], str] = recorded_digest, tag: str = "") -> str:
    """What a pair's result depends on, as one hash of its files' recorded digests (and ``tag``: how its
    BatchNorm statistics are made). Reading headers only: cheap for thousands of pairs."""
    digest = hashlib.sha1(f"{PAIR_ROW_VERSION}/{tag}".encode())
    for path in paths:
        digest.update(digest_of(str(path)).encode())
    return digest.hexdigest()


class PairScorer:
    """Scores the midpoint soups of one job's pairs: evaluators on val, test and corrupted test, the runs'
    rows, and small caches of checkpoints, flattened weights and cached outputs (pairs are sorted by run, so
    a run's weights are read once or twice per job, not once per pair)."""

    def __init__(self, config: dict[str, Any], paths: PairPaths, runs: dict[str, RunFiles], threads: int = 1) -> None:
        context = JobContext.open(config, paths.data, threads)
        corrupted = TensorData(paths.corrupted)
        self.config, self.paths, self.runs = config, paths, runs
        self.evaluators = {"val": context.evaluator("val"), "test": context.evaluator("test"),
                           CORRUPTED_SPLIT: context.evaluator(CORRUPTED_SPLIT, data=corrupted)}
        self.rows = {run_id: run_row(files.metrics) for run_id, files in runs.items()}  # once, not per pair
        self.state = lru_cache(maxsize=4)(lambda run_id: read_safetensors(runs[run_id].model))
        self.vector = lru_cache(maxsize=8)(self._vector)
        self.outputs = lru_cache(maxsize=None)(self._outputs)
        self.digest = lru_cache(maxsize=None)(recorded_digest)  # the data, corrupted copy, init: in every key
        self.statistics, self.refresher = self._statistics(context)

    def _statistics(self, context: JobContext) -> tuple[list[str], BatchNormRefresher | None]:
        """The BatchNorm options pairs are scored with (``analysis.bn``; ``keep`` only for a model without
        BatchNorm) and, for ``recompute``, the re-estimation on the train sample (one per job)."""
        wanted, model = list(self.config["analysis"]["bn"]), self.evaluators["val"].model
        if not has_batchnorm(model):
            if "recompute" in wanted:
                log.info("analysis.bn: %s has no BatchNorm layer, so pairs are scored with keep only",
                         self.config["model"]["name"])
            return ["keep"], None
        if "recompute" not in wanted:
            return wanted, None
        refresher = BatchNormRefresher(context.model(), context.data, context.device,
                                       int(self.config["analysis"]["bn_images"]), pipeline_seed(self.config, 0),
                                       context.bn_batch_size())
        log.info("pair soups with re-estimated BatchNorm statistics: %d train images per midpoint",
                 refresher.images.shape[0])
        return wanted, refresher

    def tag(self, bn: str) -> str:
        """What a row's BatchNorm statistics depend on besides the files: the option and its train sample."""
        if bn == "keep":
            return "keep"
        batch = self.refresher.batch_size  # named only when not the usual one: earlier rows keep their tags
        return (f"recompute/{self.refresher.images.shape[0]}/{pipeline_seed(self.config, 0)}"
                + ("" if batch == BN_BATCH else f"/batch{batch}"))

    def _vector(self, key: str) -> torch.Tensor:
        """The flattened weights of a run (by id) or of an init checkpoint (by path)."""
        return flatten(self.state(key) if key in self.runs else read_safetensors(key))

    def _outputs(self, run_id: str) -> tuple[torch.Tensor, torch.Tensor, Scores]:
        tensors = read_safetensors(self.runs[run_id].outputs)
        corrupted = read_safetensors(self.runs[run_id].corrupted)["logits"]
        return tensors["test_logits"], tensors["test_features"], scores_from_logits(
            corrupted, self.evaluators[CORRUPTED_SPLIT].labels)

    def init_of(self, run_a: str, run_b: str) -> str:
        """The checkpoint where the two trajectories split: the earlier branch point, or the final init."""
        branches = [e for e in (_branch(self.rows[run_a]), _branch(self.rows[run_b])) if e is not None]
        epochs = self.paths.inits["epochs"]
        return epochs[min(branches)] if branches and epochs else self.paths.inits["final"]

    def cache_file(self, run_a: str, run_b: str, bn: str) -> Path | None:
        """Where this pair's row under BatchNorm option ``bn`` is kept, named by the hash of everything it
        depends on."""
        if not self.paths.cache:
            return None
        a, b = self.runs[run_a], self.runs[run_b]
        key = content_key(a.model, a.outputs, b.model, b.outputs, a.corrupted, b.corrupted,
                          self.init_of(run_a, run_b), self.paths.data, self.paths.corrupted,
                          digest_of=self.digest, tag=self.tag(bn))
        return Path(self.paths.cache) / f"{key}.json"

    def midpoint(self, bn: str, averaged: StateDict) -> StateDict:
        """The midpoint as scored under ``bn``: as averaged, or with its BatchNorm statistics re-estimated."""
        return averaged if bn == "keep" else self.refresher.refresh(averaged)

    def pair_rows(self, run_a: str, run_b: str, statistics: list[str]) -> list[dict[str, Any]]:
        """The midpoint soup of two usable runs under each BatchNorm option of ``statistics``: one row each,
        with its scores, its gains, the runs' similarity. One average and one re-estimation per midpoint."""
        soup = average(iter((self.state(run_a), self.state(run_b))))
        return [self.pair_row(run_a, run_b, bn, self.midpoint(bn, soup)) for bn in statistics]

    def pair_row(self, run_a: str, run_b: str, bn: str, soup: StateDict) -> dict[str, Any]:
        """One row: ``soup`` (the midpoint as scored under BatchNorm option ``bn``) against the two runs as
        they are, and the runs' similarity."""
        a, b = self.rows[run_a], self.rows[run_b]
        row: dict[str, Any] = {"run_a": run_a, "run_b": run_b, "bn": bn, "status": "ok",
                               "shared_epochs": shared_epochs(self.config, _branch(a), _branch(b))}
        scores = {split: evaluator.scores(soup) for split, evaluator in self.evaluators.items()}
        logits_a, features_a, corrupted_a = self.outputs(run_a)
        logits_b, features_b, corrupted_b = self.outputs(run_b)
        for split in ("val", "test"):
            row[f"{split}_loss_a"], row[f"{split}_loss_b"] = a[f"{split}_loss"], b[f"{split}_loss"]
            row[f"{split}_accuracy_a"], row[f"{split}_accuracy_b"] = a[f"{split}_accuracy"], b[f"{split}_accuracy"]
            row[f"soup_{split}_loss"], row[f"soup_{split}_accuracy"] = scores[split].loss, scores[split].accuracy
        row.update({"loss_corrupted_a": corrupted_a.loss, "loss_corrupted_b": corrupted_b.loss,
                    "accuracy_corrupted_a": corrupted_a.accuracy, "accuracy_corrupted_b": corrupted_b.accuracy,
                    "soup_loss_corrupted": scores[CORRUPTED_SPLIT].loss, "soup_accuracy_corrupted": scores[CORRUPTED_SPLIT].accuracy})
        row["gain_loss"] = analysis.loss_gain(a["test_loss"], b["test_loss"], scores["test"].loss)
        row["gain_accuracy"] = analysis.accuracy_gain(a["test_accuracy"], b["test_accuracy"], scores["test"].accuracy)
        row["gain_loss_val"] = analysis.loss_gain(a["val_loss"], b["val_loss"], scores["val"].loss)
        row["gain_loss_corrupted"] = analysis.loss_gain(corrupted_a.loss, corrupted_b.loss, scores[CORRUPTED_SPLIT].loss)
        row["gain_accuracy_corrupted"] = analysis.accuracy_gain(corrupted_a.accuracy, corrupted_b.accuracy,
                                                                scores[CORRUPTED_SPLIT].accuracy)
        init = self.init_of(run_a, run_b)
        row.update(parameter_similarity(self.vector(run_a), self.vector(run_b), self.vector(init)))
        row.update(output_similarity(logits_a, logits_b, features_a, features_b))
        return row


def pair_soups(config: dict[str, Any], pairs: list[list[str]], runs: dict[str, RunFiles], paths: PairPaths,
               threads: int = 1) -> pd.DataFrame:
    """Midpoint soups ½θA + ½θB of ``pairs``: metrics on val, test and corrupted test, soup gains, similarity.

    One row per pair and BatchNorm option (``analysis.bn``: ``keep`` and/or ``recompute``; column ``bn``). A
    pair's task vectors are taken from the checkpoint where the two trajectories split (the earlier branch
    point). With ``paths.cache`` (a folder), each row is kept under the hash of everything it depends on (both
    checkpoints, their cached outputs, the init, the data, the BatchNorm option and its train sample) and
    reused: adding a run to a finished analysis computes only the pairs that include it, however the pairs
    are dealt to jobs, and adding ``recompute`` to a finished ``keep`` analysis computes only those rows.
    Counts (computed, reused, skipped) are of rows."""
    set_threads(threads)
    scorer = PairScorer(config, paths, runs, threads)
    rows, counts = [], {"computed": 0, "reused": 0, "skipped": 0}
    for index, (run_a, run_b) in enumerate(pairs, 1):
        unusable = [(run, scorer.rows[run]["status"]) for run in (run_a, run_b) if scorer.rows[run]["status"] != "ok"]
        if unusable:
            status = "skipped: " + ", ".join(f"{run} is {state}" for run, state in unusable)
            rows += [{"run_a": run_a, "run_b": run_b, "bn": bn, "status": status} for bn in scorer.statistics]
            counts["skipped"] += len(scorer.statistics)
            continue
        cached = {bn: scorer.cache_file(run_a, run_b, bn) for bn in scorer.statistics}
        kept = {bn: json.loads(path.read_text()) for bn, path in cached.items() if path is not None and path.exists()}
        missing = [bn for bn in scorer.statistics if bn not in kept]
        start = time.perf_counter()
        fresh = dict(zip(missing, scorer.pair_rows(run_a, run_b, missing))) if missing else {}
        seconds = (time.perf_counter() - start) / max(1, len(fresh))  # the pair's time, shared by its new rows
        for bn, row in fresh.items():
            row["seconds"] = seconds
            if cached[bn] is not None:
                atomic_write_text(json.dumps(row), cached[bn])
            log.info("pair %d/%d %s + %s, bn %s: gain %.4f (loss), %+.4f (accuracy), KL %.4f", index, len(pairs),
                     run_a, run_b, bn, row["gain_loss"], row["gain_accuracy"], row["kl_divergence"])
        rows += [kept[bn] if bn in kept else fresh[bn] for bn in scorer.statistics]
        counts["computed"] += len(fresh)
        counts["reused"] += len(kept)
    log.info("pair soups: %(computed)d computed, %(reused)d from the cache, %(skipped)d skipped (rows: pairs x "
             "BatchNorm options " + ", ".join(scorer.statistics) + ")", counts)
    table = pd.DataFrame(rows)
    atomic_write_parquet(table, paths.out)
    return table
