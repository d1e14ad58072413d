"""seaborn figures of "Too Salty": gain vs similarity, transitivity, the soup-gain embedding, shared training,
corrupted data. Each function draws one PNG from the analysis tables; empty inputs give a labelled empty plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from soupflow.core.analysis import spearman
from soupflow.core.similarity import MEASURES
from soupflow.report.figures import empty_axes, legend_outside, plt, save_figure


def plot_gain_vs_similarity(pairs: pd.DataFrame, path: str, positive_only: bool = False) -> None:
    """Soup gain (loss) against each similarity measure, Spearman in each title (Figures 3, 4, A3, A4)."""
    frame = pairs[pairs.gain_loss > 0] if positive_only else pairs
    columns = 3
    rows = int(np.ceil(len(MEASURES) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax, measure in zip(axes.flat, MEASURES):
        if frame.empty:
            empty_axes(ax, "no positive soups" if positive_only else "no pairs")
            continue
        sns.scatterplot(data=frame, x=measure, y="gain_loss", ax=ax, s=18)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{measure}: Spearman {spearman(frame[measure], frame.gain_loss):.2f}", fontsize=9)
        ax.set_ylabel("soup gain (test loss)")
    for ax in list(axes.flat)[len(MEASURES):]:
        ax.set_axis_off()
    fig.suptitle("positive-gain pairs only" if positive_only else "all pairs")
    save_figure(fig, path)


def plot_transitivity(triples: pd.DataFrame, path: str) -> None:
    """P(B,C soup positively) vs #positive soups with A (Figure 5) and gain(B,C) vs min gain with A (A5)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if triples.empty:
        empty_axes(left, "no triplet with all three pairs souped")
        empty_axes(right, "")
    else:
        summary = triples.groupby("positive_with_a").positive_bc.mean().reindex([0, 1, 2])
        sns.barplot(x=summary.index.astype(str), y=summary.values, ax=left, color="C0")
        left.set_xlabel("positive soups of A with B and C")
        left.set_ylabel("P(B and C soup positively)")
        left.set_ylim(0, 1)
        sns.scatterplot(data=triples, x="min_gain_with_a", y="gain_bc", ax=right, s=10, alpha=0.5)
        right.set_title(f"Spearman {spearman(triples.min_gain_with_a, triples.gain_bc):.2f}")
        right.set_xlabel("min(gain(A,B), gain(A,C))")
        right.set_ylabel("gain(B,C)")
    save_figure(fig, path)


def plot_embedding(embedded: pd.DataFrame, pairs: pd.DataFrame, color_by: str, path: str) -> None:
    """Runs placed by MDS of d = −sign(gain) − 0.1·gain; edges are positive soups (Figure 6)."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if embedded.empty:
        empty_axes(ax, "no runs")
        save_figure(fig, path)
        return
    where = embedded.set_index("run_id")[["x", "y"]]
    for a, b in zip(pairs.run_a[pairs.gain_loss > 0], pairs.run_b[pairs.gain_loss > 0]):
        if a in where.index and b in where.index:
            ax.plot(*zip(where.loc[a], where.loc[b]), color="grey", lw=0.6, alpha=0.6, zorder=1)
    column = f"hp_{color_by}"
    hue = None
    if column in embedded:  # runs without a value (e.g. no branch epoch: the end of pretraining) get their own colour
        values = embedded[column].astype(object)
        hue = values.where(values.notna(), "default").map(lambda v: f"{v:g}" if isinstance(v, float) else str(v))
    sns.scatterplot(data=embedded, x="x", y="y", hue=hue, ax=ax, s=40, zorder=2)
    if hue is not None:
        legend_outside(ax, title=color_by)
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    save_figure(fig, path)


def plot_shared_training(pairs: pd.DataFrame, shared: pd.DataFrame, path: str) -> None:
    """Quantiles of soup gain vs shared epochs (Figure 1); P(gain > 0) and mean positive gain (Figure 2)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if shared.empty:
        empty_axes(left, "no shared-epoch information (model.init is not pretrain)")
        empty_axes(right, "")
        save_figure(fig, path)
        return
    for q, style in (("q10", ":"), ("q25", "--"), ("q50", "-"), ("q75", "--"), ("q90", ":")):
        left.plot(shared.shared_epochs, shared[q], style, marker="o", label=q.replace("q", "") + "%")
    left.axhline(0, color="grey", lw=0.8)
    left.set_xlabel("shared pretraining epochs")
    left.set_ylabel("soup gain (test accuracy)")
    left.legend(title="quantile", fontsize=8)
    right.plot(shared.shared_epochs, shared.p_positive, marker="o", color="C0", label="P(gain > 0)")
    if "p_positive_corrupted" in shared:
        right.plot(shared.shared_epochs, shared.p_positive_corrupted, marker="s", color="C2", label="P(gain > 0), corrupted")
    right.set_ylim(0, 1)
    right.set_xlabel("shared pretraining epochs")
    right.set_ylabel("probability of positive gain")
    twin = right.twinx()
    twin.plot(shared.shared_epochs, shared.mean_gain_given_positive, marker="^", color="C1", label="mean gain | positive")
    twin.set_ylabel("mean accuracy gain given positive")
    lines = right.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    right.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
    save_figure(fig, path)


def plot_corrupted(pairs: pd.DataFrame, gaps: pd.DataFrame, path: str) -> None:
    """Gain on corrupted vs clean test data, all and positive pairs (A6, Figure 7); CDF of the change of the
    robustness gap after souping (A8)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    if pairs.empty:
        for ax in axes:
            empty_axes(ax, "no pairs")
        save_figure(fig, path)
        return
    for ax, frame, title in ((axes[0], pairs, "all pairs"), (axes[1], pairs[pairs.gain_loss > 0], "positive on clean test")):
        if frame.empty:
            empty_axes(ax, "no positive soups")
            continue
        sns.scatterplot(data=frame, x="gain_loss", y="gain_loss_corrupted", ax=ax, s=15)
        ax.set_title(f"{title}: Spearman {spearman(frame.gain_loss, frame.gain_loss_corrupted):.2f}")
        ax.set_xlabel("soup gain, clean test (loss)")
        ax.set_ylabel("soup gain, corrupted (loss)")
    sns.ecdfplot(gaps.gap_change.dropna(), ax=axes[2])
    axes[2].axvline(0, color="grey", lw=0.8)
    axes[2].set_xlabel("robustness gap after − before souping")
    axes[2].set_title(f"mean {gaps.gap_change.mean():+.3f}, median {gaps.gap_change.median():+.3f}")
    save_figure(fig, path)


def plot_analysis_figures(pairs, triples, embedded, gaps, shared, color_by: str, paths: dict[str, str]) -> None:
    """Every analysis figure, from the tables ``analysis_job.analyse`` computed (five frames, passed as
    such: seven parameters) to ``paths`` (``analysis_job.AnalysisPlots`` as a dict)."""
    plot_gain_vs_similarity(pairs, paths["similarity"])
    plot_gain_vs_similarity(pairs, paths["similarity_positive"], positive_only=True)
    plot_transitivity(triples, paths["transitivity"])
    plot_embedding(embedded, pairs, color_by, paths["embedding"])
    plot_shared_training(pairs, shared, paths["shared_training"])
    plot_corrupted(pairs, gaps, paths["corrupted"])
