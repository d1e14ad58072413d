"""The pair jobs of the soup analysis ("Too Salty"): midpoint soups ½θA + ½θB of pairs of runs with their
gains on val, test and corrupted test and the similarity of the two runs; and the sanity soups (a model with
itself, two untrained models) that check the gain definitions.

Every run's test logits and penultimate features come from its fine-tune job (its outputs file) and its
corrupted logits from one job per run (``corrupted_job``): a pair job only evaluates the soup itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from soupflow import analysis
from soupflow.average import average
from soupflow.corrupted_job import CORRUPTED
from soupflow.data import PreparedData
from soupflow.evaluate import Evaluator, Scores, scores_from_logits
from soupflow.io import atomic_write_parquet, atomic_write_text, open_safetensors, read_safetensors
from soupflow.models import model_for, pick_device, set_threads, untrained_state
from soupflow.similarity import flatten, output_similarity, parameter_similarity

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
    checkpoints task vectors are measured from ("final" and ``epoch_<N>`` → path), the chunk table, and the
    folder of per-pair results kept across reruns (None: no cache)."""

    data: str
    corrupted: str
    out: str
    inits: dict[str, str] = field(default_factory=dict)
    cache: str | None = None


def _run_row(metrics_path: str) -> dict[str, Any]:
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


def recorded_digest(path: str) -> str:
    """The sha256 soupflow records in a safetensors header (the path and size where there is none)."""
    with open_safetensors(path) as handle:
        recorded = (handle.metadata() or {}).get("sha256")
    return recorded or f"{path}:{os.path.getsize(path)}"


def content_key(*paths: str, digest_of: Callable[[str], str] = recorded_digest) -> str:
    """What a pair's result depends on, as one hash of its files' recorded digests. Reading headers only:
    cheap for thousands of pairs."""
    digest = hashlib.sha1(PAIR_ROW_VERSION.encode())
    for path in paths:
        digest.update(digest_of(str(path)).encode())
    return digest.hexdigest()


class PairKitchen:
    """What the pairs of one job share: evaluators on val, test and corrupted test, the runs' rows, and
    small caches of checkpoints, flattened weights and cached outputs (pairs are sorted by run, so a run's
    weights are read once or twice per job, not once per pair)."""

    def __init__(self, config: dict[str, Any], paths: PairPaths, runs: dict[str, RunFiles]) -> None:
        data, corrupted = PreparedData(paths.data), PreparedData(paths.corrupted)
        device = pick_device(config["evaluation"]["device"])
        batch = config["evaluation"]["batch_size"]
        self.config, self.paths, self.runs = config, paths, runs
        self.evaluators = {split: Evaluator(model_for(data, config["model"]), source, split, device, batch)
                           for split, source in (("val", data), ("test", data), (CORRUPTED, corrupted))}
        self.rows = {run_id: _run_row(files.metrics) for run_id, files in runs.items()}  # once, not per pair
        self.state = lru_cache(maxsize=4)(lambda run_id: read_safetensors(runs[run_id].model))
        self.vector = lru_cache(maxsize=8)(self._vector)
        self.outputs = lru_cache(maxsize=None)(self._outputs)
        self.digest = lru_cache(maxsize=None)(recorded_digest)  # the data, corrupted copy, init: in every key

    def _vector(self, key: str) -> torch.Tensor:
        return flatten(read_safetensors(self.paths.inits[key]) if key in self.paths.inits else self.state(key))

    def _outputs(self, run_id: str) -> tuple[torch.Tensor, torch.Tensor, Scores]:
        tensors = read_safetensors(self.runs[run_id].outputs)
        corrupted = read_safetensors(self.runs[run_id].corrupted)["logits"]
        return tensors["test_logits"], tensors["test_features"], scores_from_logits(
            corrupted, self.evaluators[CORRUPTED].labels)

    def init_key(self, run_a: str, run_b: str) -> str:
        """The checkpoint where the two trajectories split: the earlier branch point, or the final init."""
        branches = [e for e in (_branch(self.rows[run_a]), _branch(self.rows[run_b])) if e is not None]
        return f"epoch_{min(branches)}" if branches and self.config["model"]["init"] == "pretrain" else "final"

    def cache_file(self, run_a: str, run_b: str) -> Path | None:
        """Where this pair's row is kept, named by the hash of everything it depends on."""
        if not self.paths.cache:
            return None
        a, b = self.runs[run_a], self.runs[run_b]
        key = content_key(a.model, a.outputs, b.model, b.outputs, a.corrupted, b.corrupted,
                          self.paths.inits[self.init_key(run_a, run_b)], self.paths.data, self.paths.corrupted,
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
                    "soup_loss_corrupted": scores[CORRUPTED].loss, "soup_accuracy_corrupted": scores[CORRUPTED].accuracy})
        row["gain_loss"] = analysis.loss_gain(a["test_loss"], b["test_loss"], scores["test"].loss)
        row["gain_accuracy"] = analysis.accuracy_gain(a["test_accuracy"], b["test_accuracy"], scores["test"].accuracy)
        row["gain_loss_val"] = analysis.loss_gain(a["val_loss"], b["val_loss"], scores["val"].loss)
        row["gain_loss_corrupted"] = analysis.loss_gain(corrupted_a.loss, corrupted_b.loss, scores[CORRUPTED].loss)
        row["gain_accuracy_corrupted"] = analysis.accuracy_gain(corrupted_a.accuracy, corrupted_b.accuracy,
                                                                scores[CORRUPTED].accuracy)
        init = self.init_key(run_a, run_b)
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
    kitchen = PairKitchen(config, paths, runs)
    rows, counts = [], {"computed": 0, "reused": 0, "skipped": 0}
    for index, (run_a, run_b) in enumerate(pairs, 1):
        unusable = [(run, kitchen.rows[run]["status"]) for run in (run_a, run_b) if kitchen.rows[run]["status"] != "ok"]
        if unusable:
            rows.append({"run_a": run_a, "run_b": run_b,
                         "status": "skipped: " + ", ".join(f"{run} is {status}" for run, status in unusable)})
            counts["skipped"] += 1
            continue
        cached = kitchen.cache_file(run_a, run_b)
        if cached is not None and cached.exists():
            rows.append(json.loads(cached.read_text()))
            counts["reused"] += 1
            continue
        start = time.perf_counter()
        row = kitchen.pair_row(run_a, run_b) | {"seconds": 0.0}
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


def sanity(config: dict[str, Any], data_path: str, runs: list[RunFiles], out_path: str, threads: int = 1) -> pd.DataFrame:
    """Two checks of the gain definition, evaluated in one job: a model souped with itself gains exactly 0, and
    two untrained models (different seeds) gain nothing in accuracy from souping."""
    set_threads(threads)
    data = PreparedData(data_path)
    device = pick_device(config["evaluation"]["device"])
    test = Evaluator(model_for(data, config["model"]), data, "test", device, config["evaluation"]["batch_size"])
    rows = [_run_row(files.metrics) | {"model_file": files.model} for files in runs]
    usable = [r for r in rows if r["status"] == "ok"]
    cases = []
    if usable:
        best = max(usable, key=lambda r: r["val_accuracy"])
        weights = read_safetensors(best["model_file"])
        cases.append(("self", best["run_id"], best["run_id"], weights, weights))
    untrained = [untrained_state(data, config["model"], seed) for seed in (1, 2)]
    cases.append(("untrained", "untrained-seed1", "untrained-seed2", *untrained))
    out = []
    for check, name_a, name_b, state_a, state_b in cases:
        score_a, score_b = test.scores(state_a), test.scores(state_b)
        soup = test.scores(average(iter((state_a, state_b))))
        out.append({"check": check, "run_a": name_a, "run_b": name_b, "test_loss_a": score_a.loss,
                    "test_loss_b": score_b.loss, "soup_test_loss": soup.loss,
                    "gain_loss": analysis.loss_gain(score_a.loss, score_b.loss, soup.loss),
                    "gain_accuracy": analysis.accuracy_gain(score_a.accuracy, score_b.accuracy, soup.accuracy)})
    table = pd.DataFrame(out)
    atomic_write_parquet(table, out_path)
    return table
