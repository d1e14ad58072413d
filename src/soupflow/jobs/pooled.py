"""Pooling over replicates (rule pooled): each soup against each replicate's best individual, and pooled over
the replicates — the question "does this recipe win over seeds?" that one pipeline cannot answer.

Each replicate is the whole pipeline under its own top-level seed (its own splits, init, fine-tunes and soups).
The pooled interval is a hierarchical bootstrap over both sources of variance (``soupflow.core.stats.
pooled_compare``): replicates are resampled (training randomness, the variance a researcher cares about) and
so are test images, one draw for all replicates, because their test splits mostly hold the same images (named
by each replicate's ``splits.json``): the same hard images in every replicate do not count as independent
evidence. A recipe **WINS** when that interval *and* the Student-t interval over the per-replicate differences
are above zero (the t interval because a percentile bootstrap over a handful of seeds is too narrow); it
**LOSES** in the mirrored case; one replicate gets no verdict. Everything is read from what the pipelines
wrote: each soup's saved test logits and the best individual's cached ones; no model runs here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from soupflow.core.stats import Comparison, PooledComparison, compare, pooled_compare
from soupflow.report.figures import plot_replicates
from soupflow.report.summary import format_pooled
from soupflow.store.io import atomic_write_parquet, atomic_write_text, read_tensors
from soupflow.store.prepared import test_rows
from soupflow.store.tables import POOLED_SCHEMA, best_run, typed_table

log = logging.getLogger("soupflow")

@dataclass(frozen=True)
class Replicate:
    """One replicate pipeline's files: its runs table and each soup's saved test outputs."""

    seed: int
    runs: str
    splits: str  # which image each test row is
    outputs: dict[str, str]  # soup name → outputs.safetensors


@dataclass(frozen=True)
class PooledPaths:
    table: str
    text: str
    figure: str


Scored = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # soup logits, best individual's logits, labels


def _scored(replicate: Replicate) -> dict[str, Scored]:
    """{soup: (its test logits, the best individual's, the labels)} of one replicate."""
    best = best_run(pd.read_parquet(replicate.runs))
    if best is None:
        raise ValueError(f"replicate {replicate.seed}: no usable run in {replicate.runs}")
    (reference,) = read_tensors(best.outputs_file, "test_logits")
    out = {}
    for soup, path in replicate.outputs.items():
        logits, labels = read_tensors(path, "test_logits", "test_labels")
        if logits.shape != reference.shape:
            raise ValueError(f"replicate {replicate.seed}: {path} and {best.outputs_file} score different test images")
        out[soup] = (logits, reference, labels)
    return out


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def _row(soup: str, comparison: Comparison, scored: list[Scored], **columns) -> dict:
    return {"soup": soup, **columns, **comparison.columns(""), "wins": comparison.wins,
            "test_accuracy": sum(_accuracy(s[0], s[2]) for s in scored) / len(scored),
            "best_test_accuracy": sum(_accuracy(s[1], s[2]) for s in scored) / len(scored),
            "test_images": sum(len(s[2]) for s in scored)}


def verdict(pooled: PooledComparison) -> str:
    """WINS / LOSES: the hierarchical and the t interval both on one side of zero (``PooledComparison.wins``).
    How many replicates win alone is shown, not required: a small gain that holds on every seed is shown by
    more seeds, each of whose own interval may still cover zero."""
    return "WINS" if pooled.wins else "LOSES" if pooled.loses else ""


def pooled_rows(replicates: list[Replicate], recipes: dict[str, str]) -> list[dict]:
    """Per soup: one row per replicate and the pooled row (``POOLED_SCHEMA``)."""
    scored = {replicate.seed: _scored(replicate) for replicate in replicates}
    images = [test_rows(json.loads(Path(replicate.splits).read_text())) for replicate in replicates]
    rows = []
    for soup, recipe in recipes.items():
        alone = []
        for seed, soups in scored.items():
            comparison = compare(*soups[soup])
            alone.append(comparison)
            rows.append(_row(soup, comparison, [soups[soup]], recipe=recipe, scope="replicate", seed=seed))
        pooled = pooled_compare([soups[soup] for soups in scored.values()], images)
        wins_k = sum(c.accuracy_pt.low > 0 for c in alone)
        loses_k = sum(c.accuracy_pt.high < 0 for c in alone)
        rows.append(_row(soup, pooled, [soups[soup] for soups in scored.values()], recipe=recipe, scope="pooled",
                         wins_k=wins_k, loses_k=loses_k, replicates_n=len(alone),
                         verdict=verdict(pooled)))
    return rows


def pool_replicates(replicates: list[Replicate], soups_table: str, paths: PooledPaths) -> pd.DataFrame:
    """Pool every soup of the top-level seed's soups table over the replicates; write table, text and figure."""
    soups = pd.read_parquet(soups_table)
    recipes = dict(zip(soups.soup, soups.recipe))
    table = typed_table(pooled_rows(replicates, recipes), POOLED_SCHEMA).to_pandas()
    atomic_write_parquet(table, paths.table)
    text = format_pooled(table)
    atomic_write_text(text + "\n", paths.text)
    plot_replicates(table, paths.figure)
    log.info("%s", text)
    return table
