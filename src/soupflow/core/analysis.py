"""When do soups work? Statistics over pairwise soups ("Too Salty", Mackenzie & Ghyselinckx).

Plain functions over the pair table (one row per pair of runs, with soup gains and similarity measures):
pair sampling, Spearman correlations, transitivity over triplets, shared-training curves, the soup-gain
embedding and the robustness gap. Soup gain in loss is ``min(L_A, L_B) − L_soup`` (positive = the soup is
better than both); in accuracy ``acc_soup − max(acc_A, acc_B)``.

A pair table may hold a pair once per BatchNorm option (column ``bn``: the midpoint's statistics averaged,
``keep``, or re-estimated, ``recompute``); the statistics of one option are computed by :func:`per_bn`, which
labels every table with it. A table without the column is all ``keep``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from soupflow.core.similarity import MEASURES
from soupflow.plan.catalog import BN_STATISTICS
from soupflow.plan.grid import sample_pairs  # noqa: F401  (re-exported: pairs are part of the analysis)


def by_bn(frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """(BatchNorm option, its rows) in the catalog's order (keep first); a frame without ``bn`` or without rows
    is one keep group."""
    if "bn" not in frame or frame.empty:
        yield "keep", frame
        return
    present = set(frame.bn.dropna())
    for bn in [b for b in BN_STATISTICS if b in present] + sorted(present - set(BN_STATISTICS)):
        yield bn, frame[frame.bn == bn].reset_index(drop=True)


def per_bn(frame: pd.DataFrame, table: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    """``table`` of each BatchNorm option's rows, stacked, with the option as a first column ``bn``."""
    parts = []
    for bn, rows in by_bn(frame):
        part = table(rows)
        part = part.drop(columns="bn") if "bn" in part else part
        part.insert(0, "bn", bn)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def loss_gain(loss_a: float, loss_b: float, loss_soup: float) -> float:
    return min(loss_a, loss_b) - loss_soup


def accuracy_gain(accuracy_a: float, accuracy_b: float, accuracy_soup: float) -> float:
    return accuracy_soup - max(accuracy_a, accuracy_b)


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rank correlation (average ranks for ties), NaN pairs dropped; NaN if fewer than 3 points."""
    frame = pd.DataFrame({"x": x, "y": y}).replace([np.inf, -np.inf], np.nan).dropna()
    if len(frame) < 3 or frame.x.nunique() < 2 or frame.y.nunique() < 2:
        return float("nan")
    return float(np.corrcoef(frame.x.rank(), frame.y.rank())[0, 1])


def correlations(pairs: pd.DataFrame, gain: str = "gain_loss") -> pd.DataFrame:
    """Spearman of each similarity measure with soup gain, over all pairs and over positive-gain pairs."""
    rows = []
    for subset, frame in (("all", pairs), ("positive", pairs[pairs[gain] > 0])):
        for measure in MEASURES:
            if measure in frame:
                rows.append({"measure": measure, "subset": subset, "gain": gain, "n_pairs": len(frame),
                             "spearman": spearman(frame[measure], frame[gain])})
    return pd.DataFrame(rows)


def gain_lookup(pairs: pd.DataFrame, gain: str = "gain_loss") -> dict[frozenset, float]:
    return {frozenset((a, b)): g for a, b, g in zip(pairs.run_a, pairs.run_b, pairs[gain]) if g == g}


def triplets(pairs: pd.DataFrame, gain: str = "gain_loss") -> pd.DataFrame:
    """Every triplet (A; B, C) whose three pairs were souped: how many of (A,B), (A,C) soup positively, whether
    (B,C) does, and gain(B,C) next to min(gain(A,B), gain(A,C))."""
    gains = gain_lookup(pairs, gain)
    partners: dict[str, set[str]] = {}
    for key in gains:
        a, b = tuple(key)
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    rows = []
    for key, gain_bc in gains.items():
        b, c = sorted(key)
        for a in sorted(partners[b] & partners[c]):
            gain_ab, gain_ac = gains[frozenset((a, b))], gains[frozenset((a, c))]
            rows.append({"a": a, "b": b, "c": c, "gain_bc": gain_bc, "gain_ab": gain_ab, "gain_ac": gain_ac,
                         "positive_with_a": int(gain_ab > 0) + int(gain_ac > 0), "positive_bc": gain_bc > 0,
                         "min_gain_with_a": min(gain_ab, gain_ac), "mean_gain_with_a": (gain_ab + gain_ac) / 2})
    return pd.DataFrame(rows, columns=["a", "b", "c", "gain_bc", "gain_ab", "gain_ac", "positive_with_a",
                                       "positive_bc", "min_gain_with_a", "mean_gain_with_a"])


def transitivity(triples: pd.DataFrame) -> pd.DataFrame:
    """P(B and C soup positively | k of (A,B), (A,C) do), k = 0, 1, 2."""
    rows = []
    for k in (0, 1, 2):
        frame = triples[triples.positive_with_a == k]
        rows.append({"positive_with_a": k, "n_triplets": len(frame),
                     "p_positive_bc": float(frame.positive_bc.mean()) if len(frame) else float("nan")})
    return pd.DataFrame(rows)


def shared_training(pairs: pd.DataFrame, gain: str = "gain_accuracy") -> pd.DataFrame:
    """Per number of shared pretraining epochs: gain quantiles, P(gain > 0), mean gain given positive, and
    P(gain > 0) on the corrupted copy in the same metric (``gain_accuracy`` → ``gain_accuracy_corrupted``).
    Column ``gain`` names the metric."""
    rows, corrupted = [], f"{gain}_corrupted"
    for shared, frame in pairs.dropna(subset=["shared_epochs"]).groupby("shared_epochs"):
        values = frame[gain].dropna()
        positive = values[values > 0]
        row = {"shared_epochs": shared, "gain": gain, "n_pairs": len(values), "p_positive": float((values > 0).mean()),
               "mean_gain_given_positive": float(positive.mean()) if len(positive) else float("nan")}
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            row[f"q{int(q * 100):02d}"] = float(values.quantile(q))
        if corrupted in frame:
            row["p_positive_corrupted"] = float((frame[corrupted].dropna() > 0).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def embedding(pairs: pd.DataFrame, run_ids: list[str], gain: str = "gain_loss") -> pd.DataFrame:
    """2-D classical multidimensional scaling of d = −sign(gain) − 0.1·gain (Too Salty, A.4).

    d is negative for positive soups; classical MDS needs dissimilarities, so d is shifted by a constant to make
    the smallest one 0 (this keeps the ordering of distances). Pairs never souped get the largest distance."""
    ids = sorted(run_ids)
    index = {run: i for i, run in enumerate(ids)}
    n = len(ids)
    if n < 3:
        return pd.DataFrame({"run_id": ids, "x": np.zeros(n), "y": np.zeros(n)})
    known = {(index[a], index[b]): g for a, b, g in zip(pairs.run_a, pairs.run_b, pairs[gain])
             if a in index and b in index and g == g}
    values = np.array([-np.sign(g) - 0.1 * g for g in known.values()]) if known else np.zeros(1)
    shift, far = values.min(), values.max()
    distance = np.full((n, n), far - shift)
    for (i, j), g in known.items():
        distance[i, j] = distance[j, i] = (-np.sign(g) - 0.1 * g) - shift
    np.fill_diagonal(distance, 0.0)
    centring = np.eye(n) - np.ones((n, n)) / n
    gram = -0.5 * centring @ (distance ** 2) @ centring
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    top = np.argsort(eigenvalues)[::-1][:2]
    coordinates = eigenvectors[:, top] * np.sqrt(np.clip(eigenvalues[top], 0, None))
    return pd.DataFrame({"run_id": ids, "x": coordinates[:, 0], "y": coordinates[:, 1]})


def robustness(pairs: pd.DataFrame) -> pd.DataFrame:
    """Change of the robustness gap (corrupted loss − clean loss) after souping, per pair: the soup's gap minus
    the smaller of its parents' gaps (negative = souping narrowed the gap)."""
    before = np.minimum(pairs.loss_corrupted_a - pairs.test_loss_a, pairs.loss_corrupted_b - pairs.test_loss_b)
    after = pairs.soup_loss_corrupted - pairs.soup_test_loss
    bn = pairs["bn"] if "bn" in pairs else "keep"
    return pd.DataFrame({"run_a": pairs.run_a, "run_b": pairs.run_b, "bn": bn, "gap_before": before,
                         "gap_after": after, "gap_change": after - before})


def headline(pairs: pd.DataFrame, correlation: pd.DataFrame, triples: pd.DataFrame,
             gaps: pd.DataFrame) -> dict[str, Any]:
    """The figures a reader wants first, as one flat dict."""
    positive = pairs[pairs.gain_loss > 0]
    loss_rows = correlation[correlation.gain == "gain_loss"] if "gain" in correlation else correlation
    kl = loss_rows.set_index(["measure", "subset"])["spearman"]
    by_k = transitivity(triples).set_index("positive_with_a")["p_positive_bc"] if len(triples) else {}
    return {
        "n_pairs": len(pairs),
        "fraction_positive_loss": float((pairs.gain_loss > 0).mean()) if len(pairs) else float("nan"),
        "fraction_positive_accuracy": float((pairs.gain_accuracy > 0).mean()) if len(pairs) else float("nan"),
        # Too Salty's "expected soup gain given positive": the mean gain of the pairs whose gain is above zero
        "conditional_gain_loss": float(positive.gain_loss.mean()) if len(positive) else float("nan"),
        "conditional_gain_accuracy": float(pairs.gain_accuracy[pairs.gain_accuracy > 0].mean())
        if (pairs.gain_accuracy > 0).any() else float("nan"),
        "spearman_kl_gain_all": float(kl.get(("kl_divergence", "all"), float("nan"))),
        "spearman_kl_gain_positive": float(kl.get(("kl_divergence", "positive"), float("nan"))),
        "n_triplets": len(triples),
        "p_bc_positive_given_0": float(by_k.get(0, float("nan"))) if len(triples) else float("nan"),
        "p_bc_positive_given_1": float(by_k.get(1, float("nan"))) if len(triples) else float("nan"),
        "p_bc_positive_given_2": float(by_k.get(2, float("nan"))) if len(triples) else float("nan"),
        "spearman_bc_vs_min_gain": spearman(triples.gain_bc, triples.min_gain_with_a) if len(triples) else float("nan"),
        "spearman_bc_vs_mean_gain": spearman(triples.gain_bc, triples.mean_gain_with_a) if len(triples) else float("nan"),
        "spearman_clean_corrupted_all": spearman(pairs.gain_loss, pairs.gain_loss_corrupted),
        "spearman_clean_corrupted_positive": spearman(positive.gain_loss, positive.gain_loss_corrupted),
        "robustness_gap_change_mean": float(gaps.gap_change.mean()),
        "robustness_gap_change_median": float(gaps.gap_change.median()),
    }
