"""The jobs of the soup analysis (``snakemake analysis``): a corrupted test split, each run's logits on it,
pairwise midpoint soups with their gains and similarity measures, sanity soups, and the final tables/plots.

Every model's test logits and penultimate features come from its fine-tune job (``outputs.safetensors``) and
its corrupted logits from one job per run: a pair job only evaluates the soup itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from soupflow import analysis
from soupflow.average import average
from soupflow.corruptions import corrupt_split
from soupflow.data import PreparedData
from soupflow.evaluate import Evaluator, Scores, scores_from_logits
from soupflow.io import (
    atomic_save_safetensors,
    atomic_write_parquet,
    atomic_write_text,
    open_safetensors,
    read_safetensors,
)
from soupflow.jobs import model_for, untrained_state
from soupflow.models import load_checkpoint, pick_device, set_threads
from soupflow.similarity import flatten, output_similarity, parameter_similarity

log = logging.getLogger("soupflow")
CORRUPTED = "corrupted"


def make_corrupted(config: dict[str, Any], data_path: str, out_path: str) -> None:
    """A seeded corrupted copy of the test split, readable by :class:`PreparedData` as split 'corrupted'."""
    spec = config["analysis"]["corruptions"]
    images, labels = PreparedData(data_path).split("test")
    tensors = corrupt_split(images, labels, spec["types"], spec["severities"], spec["max_images"], spec["seed"])
    with open_safetensors(data_path) as handle:
        meta = dict(handle.metadata())
    meta["corruption_types"] = json.dumps(spec["types"])
    atomic_save_safetensors(tensors, out_path, metadata=meta)
    log.info("corrupted test copy: %d images, %s at severities %s", tensors["corrupted_y"].numel(),
             ", ".join(spec["types"]), spec["severities"])


def corrupted_outputs(config: dict[str, Any], data_path: str, run_dir: str, corrupted_path: str, out_path: str,
                      threads: int = 1) -> None:
    """One run's logits on the corrupted split, computed once for every pair it is in."""
    set_threads(threads)
    data, corrupted = PreparedData(data_path), PreparedData(corrupted_path)
    device = pick_device(config["evaluation"]["device"])
    evaluator = Evaluator(model_for(data, config["model"]), corrupted, CORRUPTED, device, config["evaluation"]["batch_size"])
    logits = evaluator.logits(load_checkpoint(Path(run_dir) / "model.safetensors", device))
    atomic_save_safetensors({"logits": logits}, out_path)


def _run_row(run_dir: str) -> dict[str, Any]:
    return pd.read_parquet(Path(run_dir) / "metrics.parquet").iloc[0].to_dict()


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


def content_key(*paths: str) -> str:
    """What a pair's result depends on, as one hash: the sha256 soupflow records in each safetensors header
    (the file's path and size where there is none). Reading headers only: cheap for thousands of pairs."""
    digest = hashlib.sha1(PAIR_ROW_VERSION.encode())
    for path in paths:
        with open_safetensors(path) as handle:
            recorded = (handle.metadata() or {}).get("sha256")
        digest.update((recorded or f"{path}:{os.path.getsize(path)}").encode())
    return digest.hexdigest()


def pair_soups(config: dict[str, Any], pairs: list[list[str]], data_path: str, corrupted_path: str,
               run_dirs: dict[str, str], corrupted_logits: dict[str, str], init_paths: dict[str, str],
               out_path: str, threads: int = 1, cache: str | None = None) -> pd.DataFrame:
    """Midpoint soups ½θA + ½θB of ``pairs``: metrics on val, test and corrupted test, soup gains, similarity.

    ``init_paths`` maps "final" and each kept pretraining epoch to its checkpoint; a pair's task vectors are
    taken from the checkpoint where the two trajectories split (the earlier branch point). With ``cache`` (a
    folder), each pair's row is kept under the hash of everything it depends on (both checkpoints, their
    cached outputs, the init, the data) and reused: adding a run to a finished analysis computes only the
    pairs that include it, however the pairs are dealt to jobs."""
    set_threads(threads)
    data, corrupted = PreparedData(data_path), PreparedData(corrupted_path)
    device = pick_device(config["evaluation"]["device"])
    batch = config["evaluation"]["batch_size"]
    evaluators = {split: Evaluator(model_for(data, config["model"]), source, split, device, batch)
                  for split, source in (("val", data), ("test", data), (CORRUPTED, corrupted))}

    @lru_cache(maxsize=4)
    def state(run_id: str) -> dict[str, torch.Tensor]:
        return read_safetensors(str(Path(run_dirs[run_id]) / "model.safetensors"))

    @lru_cache(maxsize=8)
    def vector(key: str) -> torch.Tensor:
        return flatten(read_safetensors(init_paths[key]) if key in init_paths else state(key))

    @lru_cache(maxsize=None)
    def outputs(run_id: str) -> tuple[torch.Tensor, torch.Tensor, Scores]:
        tensors = read_safetensors(str(Path(run_dirs[run_id]) / "outputs.safetensors"))
        corrupted_scores = scores_from_logits(read_safetensors(corrupted_logits[run_id])["logits"], evaluators[CORRUPTED].labels)
        return tensors["test_logits"], tensors["test_features"], corrupted_scores

    run_rows = {run_id: _run_row(run_dir) for run_id, run_dir in run_dirs.items()}  # read once, not per pair
    rows, reused = [], 0
    for index, (run_a, run_b) in enumerate(pairs, 1):
        start = time.perf_counter()
        a, b = run_rows[run_a], run_rows[run_b]
        row: dict[str, Any] = {"run_a": run_a, "run_b": run_b, "status": "ok"}
        unusable = [(run, r["status"]) for run, r in ((run_a, a), (run_b, b)) if r["status"] != "ok"]
        if unusable:
            row["status"] = "skipped: " + ", ".join(f"{run} is {status}" for run, status in unusable)
            rows.append(row)
            continue
        branch_a, branch_b = _branch(a), _branch(b)
        branches = [e for e in (branch_a, branch_b) if e is not None]
        init_key = f"epoch_{min(branches)}" if branches and config["model"]["init"] == "pretrain" else "final"
        cached = None
        if cache:
            files = [str(Path(run_dirs[r]) / n) for r in (run_a, run_b) for n in ("model.safetensors", "outputs.safetensors")]
            key = content_key(*files, corrupted_logits[run_a], corrupted_logits[run_b], init_paths[init_key],
                              data_path, corrupted_path)
            cached = Path(cache) / f"{key}.json"
            if cached.exists():
                rows.append(json.loads(cached.read_text()))
                reused += 1
                continue
        row["shared_epochs"] = shared_epochs(config, branch_a, branch_b)
        soup = average(iter((state(run_a), state(run_b))))
        scores = {split: evaluator.scores(soup) for split, evaluator in evaluators.items()}
        logits_a, features_a, corrupted_a = outputs(run_a)
        logits_b, features_b, corrupted_b = outputs(run_b)
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
        row.update(parameter_similarity(vector(run_a), vector(run_b), vector(init_key)))
        row.update(output_similarity(logits_a, logits_b, features_a, features_b))
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if cached is not None:
            atomic_write_text(json.dumps(row), cached)
        log.info("pair %d/%d %s + %s: gain %.4f (loss), %+.4f (accuracy), KL %.4f", index, len(pairs), run_a, run_b,
                 row["gain_loss"], row["gain_accuracy"], row["kl_divergence"])
    log.info("pair soups: %d computed, %d from the cache, %d skipped", sum("seconds" in r for r in rows) - reused,
             reused, sum(r["status"] != "ok" for r in rows))
    table = pd.DataFrame(rows)
    atomic_write_parquet(table, out_path)
    return table


def sanity(config: dict[str, Any], data_path: str, run_dirs: list[str], out_path: str, threads: int = 1) -> pd.DataFrame:
    """Two checks of the gain definition, evaluated in one job: a model souped with itself gains exactly 0, and
    two untrained models (different seeds) gain nothing in accuracy from souping."""
    set_threads(threads)
    data = PreparedData(data_path)
    device = pick_device(config["evaluation"]["device"])
    test = Evaluator(model_for(data, config["model"]), data, "test", device, config["evaluation"]["batch_size"])
    rows = [_run_row(d) | {"dir": d} for d in run_dirs]
    usable = [r for r in rows if r["status"] == "ok"]
    cases = []
    if usable:
        best = max(usable, key=lambda r: r["val_accuracy"])
        weights = read_safetensors(str(Path(best["dir"]) / "model.safetensors"))
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


def analyse(config: dict[str, Any], chunk_paths: list[str], run_dirs: list[str], sanity_path: str,
            tables: dict[str, str], plots: dict[str, str]) -> dict[str, Any]:
    """Merge the pair chunks with the runs' hyperparameters; write every table and plot of the analysis."""
    from soupflow import analysis_plots

    runs = pd.concat([pd.read_parquet(Path(d) / "metrics.parquet") for d in run_dirs], ignore_index=True)
    hp_columns = [c for c in runs.columns if c.startswith("hp_")]
    chunks = pd.concat([pd.read_parquet(p) for p in chunk_paths], ignore_index=True)
    skipped = chunks[chunks.status != "ok"]
    pairs = chunks[chunks.status == "ok"].reset_index(drop=True)
    hp = runs.set_index("run_id")[hp_columns]
    pairs = pairs.join(hp.add_suffix("_a"), on="run_a").join(hp.add_suffix("_b"), on="run_b")
    correlation = pd.concat([analysis.correlations(pairs, "gain_loss"), analysis.correlations(pairs, "gain_accuracy")],
                            ignore_index=True)
    triples = analysis.triplets(pairs)
    ok_runs = runs[runs.status == "ok"]
    embedded = analysis.embedding(pairs, ok_runs.run_id.tolist()).merge(runs[["run_id", *hp_columns]], on="run_id")
    gaps = analysis.robustness(pairs)
    shared = analysis.shared_training(pairs)
    checks = pd.read_parquet(sanity_path).set_index("check")
    headline = analysis.headline(pairs, correlation, triples, gaps) | {
        "n_pairs_skipped": len(skipped),
        "self_soup_gain_loss": float(checks.gain_loss.get("self", float("nan"))),
        "untrained_soup_gain_loss": float(checks.gain_loss.get("untrained", float("nan")))}
    written = {"pairs": pairs, "correlations": correlation, "triplets": triples,
               "transitivity": analysis.transitivity(triples), "embedding": embedded, "robustness": gaps,
               "shared_training": shared, "headline": pd.DataFrame([headline])}
    for name, frame in written.items():
        atomic_write_parquet(frame, tables[name])
    analysis_plots.plot_all(pairs, triples, embedded, gaps, shared, config["analysis"]["color_by"], plots)
    log.info("analysis: %s", json.dumps(headline, default=float))
    return headline
