"""The pair jobs of the soup analysis ("Too Salty"): midpoint soups ½θA + ½θB of pairs of runs with their
gains on val, test and corrupted test and the similarity of the two runs.

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
from soupflow.core.average import average
from soupflow.core.evaluate import Scores, scores_from_logits
from soupflow.core.models import set_threads
from soupflow.core.similarity import flatten, output_similarity, parameter_similarity
from soupflow.jobs.context import JobContext
from soupflow.plan.catalog import CORRUPTED_SPLIT
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
PAIR_ROW_VERSION = "1"


def content_key(*paths: str, digest_of: Callable[[str], str] = recorded_digest) -> str:
    """What a pair's result depends on, as one hash of its files' recorded digests. Reading headers only:
    cheap for thousands of pairs."""
    digest = hashlib.sha1(PAIR_ROW_VERSION.encode())
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

    def cache_file(self, run_a: str, run_b: str) -> Path | None:
        """Where this pair's row is kept, named by the hash of everything it depends on."""
        if not self.paths.cache:
            return None
        a, b = self.runs[run_a], self.runs[run_b]
        key = content_key(a.model, a.outputs, b.model, b.outputs, a.corrupted, b.corrupted,
                          self.init_of(run_a, run_b), self.paths.data, self.paths.corrupted,
                          digest_of=self.digest)
        return Path(self.paths.cache) / f"{key}.json"

    def pair_row(self, run_a: str, run_b: str) -> dict[str, Any]:
        """The midpoint soup of two usable runs: its scores, its gains, the runs' similarity."""
        a, b = self.rows[run_a], self.rows[run_b]
        row: dict[str, Any] = {"run_a": run_a, "run_b": run_b, "status": "ok",
                               "shared_epochs": shared_epochs(self.config, _branch(a), _branch(b))}
        soup = average(iter((self.state(run_a), self.state(run_b))))
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

    A pair's task vectors are taken from the checkpoint where the two trajectories split (the earlier branch
    point). With ``paths.cache`` (a folder), each pair's row is kept under the hash of everything it depends on
    (both checkpoints, their cached outputs, the init, the data) and reused: adding a run to a finished
    analysis computes only the pairs that include it, however the pairs are dealt to jobs."""
    set_threads(threads)
    scorer = PairScorer(config, paths, runs, threads)
    rows, counts = [], {"computed": 0, "reused": 0, "skipped": 0}
    for index, (run_a, run_b) in enumerate(pairs, 1):
        unusable = [(run, scorer.rows[run]["status"]) for run in (run_a, run_b) if scorer.rows[run]["status"] != "ok"]
        if unusable:
            rows.append({"run_a": run_a, "run_b": run_b,
                         "status": "skipped: " + ", ".join(f"{run} is {status}" for run, status in unusable)})
            counts["skipped"] += 1
            continue
        cached = scorer.cache_file(run_a, run_b)
        if cached is not None and cached.exists():
            rows.append(json.loads(cached.read_text()))
            counts["reused"] += 1
            continue
        start = time.perf_counter()
        row = scorer.pair_row(run_a, run_b) | {"seconds": 0.0}
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        counts["computed"] += 1
        if cached is not None:
            atomic_write_text(json.dumps(row), cached)
        log.info("pair %d/%d %s + %s: gain %.4f (loss), %+.4f (accuracy), KL %.4f", index, len(pairs), run_a, run_b,
                 row["gain_loss"], row["gain_accuracy"], row["kl_divergence"])
    log.info("pair soups: %(computed)d computed, %(reused)d from the cache, %(skipped)d skipped", counts)
    table = pd.DataFrame(rows)
    atomic_write_parquet(table, paths.out)
    return table
