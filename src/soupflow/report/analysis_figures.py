"""seaborn figures of "Too Salty": gain vs similarity, transitivity, the soup-gain embedding, shared training,
corrupted data. Each function draws one PNG from the analysis tables; empty inputs give a labelled empty plot.

Every figure says which BatchNorm statistics its midpoints were scored with (column ``bn``): scatters colour
by it (``BN_LABELS``), panels that would overlap (the embedding, shared training) get one row or column each."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from soupflow.core.analysis import by_bn, spearman
from soupflow.core.similarity import MEASURES
from soupflow.report.figures import empty_axes, legend_outside, plt, save_figure

#: how a figure names a pair table's BatchNorm option
BN_LABELS = {"keep": "averaged BN statistics", "recompute": "re-estimated BN statistics"}


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with column ``statistics``: each row's BatchNorm statistics as a figure names them (a table
    without ``bn``: averaged), the hue of every scatter."""
    values = frame["bn"] if "bn" in frame else pd.Series("keep", index=frame.index, dtype=object)
    return frame.assign(statistics=values.map(lambda bn: BN_LABELS.get(bn, str(bn))))


def _spearmans(frame: pd.DataFrame, x: str, y: str) -> str:
    """'Spearman 0.12 (averaged BN statistics), -0.30 (re-estimated …)', or one figure for one option."""
    parts = [(BN_LABELS.get(bn, bn), spearman(rows[x], rows[y])) for bn, rows in by_bn(frame)]
    if len(parts) == 1:
        return f"Spearman {parts[0][1]:.2f}"
    return "Spearman " + ", ".join(f"{value:.2f} ({label.split()[0]})" for label, value in parts)


def plot_gain_vs_similarity(pairs: pd.DataFrame, path: str, positive_only: bool = False) -> None:
    """Soup gain (loss) against each similarity measure, coloured by BatchNorm statistics, Spearman of each in
    the titles (Figures 3, 4, A3, A4)."""
    frame = labelled(pairs[pairs.gain_loss > 0] if positive_only else pairs)
    columns = 3
    rows = int(np.ceil(len(MEASURES) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax, measure in zip(axes.flat, MEASURES):
        if frame.empty:
            empty_axes(ax, "no positive soups" if positive_only else "no pairs")
            continue
        sns.scatterplot(data=frame, x=measure, y="gain_loss", hue="statistics", ax=ax, s=18)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{measure}: {_spearmans(frame, measure, 'gain_loss')}", fontsize=8)
        ax.set_ylabel("soup gain (test loss)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(MEASURES):]:
        ax.set_axis_off()
    fig.suptitle("positive-gain pairs only" if positive_only else "all pairs")
    save_figure(fig, path)


def plot_transitivity(triples: pd.DataFrame, path: str) -> None:
    """P(B,C soup positively) vs #positive soups with A (Figure 5) and gain(B,C) vs min gain with A (A5),
    coloured by BatchNorm statistics."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if triples.empty:
        empty_axes(left, "no triplet with all three pairs souped")
        empty_axes(right, "")
    else:
        named = labelled(triples)
        summary = named.groupby(["statistics", "positive_with_a"]).positive_bc.mean().reset_index()
        sns.barplot(data=summary, x=summary.positive_with_a.astype(str), y="positive_bc", hue="statistics",
                    order=["0", "1", "2"], ax=left)
        left.set_xlabel("positive soups of A with B and C")
        left.set_ylabel("P(B and C soup positively)")
        left.set_ylim(0, 1)
        left.legend(fontsize=7)
        sns.scatterplot(data=named, x="min_gain_with_a", y="gain_bc", hue="statistics", ax=right, s=10, alpha=0.5)
        right.set_title(_spearmans(triples, "min_gain_with_a", "gain_bc"), fontsize=9)
        right.legend(fontsize=7)
        right.set_xlabel("min(gain(A,B), gain(A,C))")
        right.set_ylabel("gain(B,C)")
    save_figure(fig, path)


def plot_embedding(embedded: pd.DataFrame, pairs: pd.DataFrame, color_by: str, path: str) -> None:
    """Runs placed by MDS of d = −sign(gain) − 0.1·gain; edges are positive soups (Figure 6): one panel per
    BatchNorm statistics the pairs were scored with."""
    groups = list(by_bn(embedded))
    fig, axes = plt.subplots(1, len(groups), figsize=(7.5 * len(groups), 5), squeeze=False)
    if embedded.empty:
        empty_axes(axes[0, 0], "no runs")
        save_figure(fig, path)
        return
    edges = dict(by_bn(pairs))
    for ax, (bn, points) in zip(axes.flat, groups):
        _embedding_panel(ax, points, edges.get(bn, pairs.iloc[:0]), color_by)
        ax.set_title(BN_LABELS.get(bn, bn))
    save_figure(fig, path)


def _embedding_panel(ax: plt.Axes, embedded: pd.DataFrame, pairs: pd.DataFrame, color_by: str) -> None:
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


def plot_shared_training(pairs: pd.DataFrame, shared: pd.DataFrame, path: str) -> None:
    """Quantiles of soup gain vs shared epochs (Figure 1); P(gain > 0) on clean and corrupted test, in the same
    metric, and mean positive gain (Figures 2, A7): one row per BatchNorm statistics."""
    groups = list(by_bn(shared))
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4 * len(groups)), squeeze=False)
    if shared.empty:
        empty_axes(axes[0, 0], "no shared-epoch information (model.init is not pretrain)")
        empty_axes(axes[0, 1], "")
        save_figure(fig, path)
        return
    for (left, right), (bn, rows) in zip(axes, groups):
        _shared_training_row(left, right, rows)
        left.set_title(BN_LABELS.get(bn, bn), fontsize=10)
    save_figure(fig, path)


def _shared_training_row(left: plt.Axes, right: plt.Axes, shared: pd.DataFrame) -> None:
    metric = str(shared["gain"].iloc[0]).removeprefix("gain_") if "gain" in shared else "accuracy"
    for q, style in (("q10", ":"), ("q25", "--"), ("q50", "-"), ("q75", "--"), ("q90", ":")):
        left.plot(shared.shared_epochs, shared[q], style, marker="o", label=q.replace("q", "") + "%")
    left.axhline(0, color="grey", lw=0.8)
    left.set_xlabel("shared pretraining epochs")
    left.set_ylabel(f"soup gain (test {metric})")
    left.legend(title="quantile", fontsize=8)
    right.plot(shared.shared_epochs, shared.p_positive, marker="o", color="C0", label=f"P({metric} gain > 0)")
    if "p_positive_corrupted" in shared:
        right.plot(shared.shared_epochs, shared.p_positive_corrupted, marker="s", color="C2",
                   label=f"P({metric} gain > 0), corrupted")
    right.set_ylim(0, 1)
    right.set_xlabel("shared pretraining epochs")
    right.set_ylabel("probability of positive gain")
    twin = right.twinx()
    twin.plot(shared.shared_epochs, shared.mean_gain_given_positive, marker="^", color="C1", label="mean gain | positive")
    twin.set_ylabel(f"mean {metric} gain given positive")
    lines = right.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    right.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)


def plot_corrupted(pairs: pd.DataFrame, gaps: pd.DataFrame, path: str) -> None:
    """Gain on corrupted vs clean test data, all and positive pairs (A6, Figure 7); CDF of the change of the
    robustness gap after souping (A8)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    if pairs.empty:
        for ax in axes:
            empty_axes(ax, "no pairs")
        save_figure(fig, path)
        return
    pairs = labelled(pairs)
    for ax, frame, title in ((axes[0], pairs, "all pairs"), (axes[1], pairs[pairs.gain_loss > 0], "positive on clean test")):
        if frame.empty:
            empty_axes(ax, "no positive soups")
            continue
        sns.scatterplot(data=frame, x="gain_loss", y="gain_loss_corrupted", hue="statistics", ax=ax, s=15)
        ax.set_title(f"{title}: {_spearmans(frame, 'gain_loss', 'gain_loss_corrupted')}", fontsize=8)
        ax.set_xlabel("soup gain, clean test (loss)")
        ax.set_ylabel("soup gain, corrupted (loss)")
        ax.legend(fontsize=7)
    changes = labelled(gaps.dropna(subset=["gap_change"]))
    sns.ecdfplot(data=changes, x="gap_change", hue="statistics", ax=axes[2])
    axes[2].axvline(0, color="grey", lw=0.8)
    axes[2].set_xlabel("robustness gap after − before souping")
    axes[2].set_title("median " + ", ".join(f"{rows.gap_change.median():+.3f} ({BN_LABELS.get(bn, bn).split()[0]})"
                                            for bn, rows in by_bn(changes)), fontsize=8)
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
