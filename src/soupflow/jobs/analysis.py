"""The analysis job: the pair chunks merged with the runs' hyperparameters into the tables and figures of
"Too Salty" (correlations of gain with similarity, transitivity, an embedding of the runs, robustness under
corruption, shared training), and a one-row headline."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from soupflow.core import analysis
from soupflow.plan.layout import AnalysisPlots, AnalysisTables
from soupflow.report.analysis_figures import plot_analysis_figures
from soupflow.store.io import atomic_write_parquet

log = logging.getLogger("soupflow")


@dataclass(frozen=True)
class AnalysisInputs:
    """The pair chunk tables, every run's metrics row, and the sanity table, as the analysis rule names them."""

    chunks: list[str]
    metrics: list[str]
    sanity: str


def _correlations(pairs: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([analysis.correlations(pairs, "gain_loss"), analysis.correlations(pairs, "gain_accuracy")],
                     ignore_index=True)


def analyse(inputs: AnalysisInputs, tables: AnalysisTables, plots: AnalysisPlots, color_by: str) -> dict[str, Any]:
    """Merge the pair chunks with the runs' hyperparameters; write every table and plot of the analysis (the
    embedding's points coloured by the hyperparameter ``color_by``). Every table is computed per BatchNorm
    option of the pairs (column ``bn``: averaged or re-estimated statistics) and says which; the headline has
    one row per option. Returns the headline of the first option (keep where present)."""
    runs = pd.concat([pd.read_parquet(path) for path in inputs.metrics], ignore_index=True)
    hp_columns = [c for c in runs.columns if c.startswith("hp_")]
    chunks = pd.concat([pd.read_parquet(p) for p in inputs.chunks], ignore_index=True)
    skipped = chunks[chunks.status != "ok"]
    pairs = chunks[chunks.status == "ok"].reset_index(drop=True)
    hp = runs.set_index("run_id")[hp_columns]
    pairs = pairs.join(hp.add_suffix("_a"), on="run_a").join(hp.add_suffix("_b"), on="run_b")
    correlation = analysis.per_bn(pairs, _correlations)
    triples = analysis.per_bn(pairs, analysis.triplets)
    ok_runs = runs[runs.status == "ok"].run_id.tolist()
    embedded = analysis.per_bn(pairs, lambda rows: analysis.embedding(rows, ok_runs)).merge(
        runs[["run_id", *hp_columns]], on="run_id")
    gaps = analysis.robustness(pairs)
    shared = analysis.per_bn(pairs, analysis.shared_training)
    checks = pd.read_parquet(inputs.sanity).set_index("check")
    sanity = {"self_soup_gain_loss": float(checks.gain_loss.get("self", float("nan"))),
              "untrained_soup_gain_loss": float(checks.gain_loss.get("untrained", float("nan")))}
    headlines = [{"bn": bn, **analysis.headline(rows, correlation[correlation.bn == bn],
                                                triples[triples.bn == bn].reset_index(drop=True),
                                                gaps[gaps.bn == bn]),
                  "n_pairs_skipped": int((skipped.get("bn", pd.Series("keep", index=skipped.index)) == bn).sum()),
                  **sanity}
                 for bn, rows in analysis.by_bn(pairs)]
    written = {"pairs": pairs, "correlations": correlation, "triplets": triples,
               "transitivity": analysis.per_bn(triples, analysis.transitivity), "embedding": embedded,
               "robustness": gaps, "shared_training": shared, "headline": pd.DataFrame(headlines)}
    for name, frame in written.items():
        atomic_write_parquet(frame, getattr(tables, name))
    plot_analysis_figures(pairs, triples, embedded, gaps, shared, color_by, asdict(plots))
    for headline in headlines:
        log.info("analysis: %s", json.dumps(headline, default=float))
    return headlines[0]
