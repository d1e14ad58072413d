"""seaborn figures of the model-soup papers, drawn from the Parquet tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from soupflow.plan.catalog import RECIPES  # noqa: E402
from soupflow.store.io import atomic_path  # noqa: E402
from soupflow.store.tables import best_run  # noqa: E402

#: recipes that are baselines or ablations: the soup figures leave them out
BASELINE_RECIPES = [name for name, traits in RECIPES.items() if traits.baseline]


def save_figure(fig: plt.Figure, path: str) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def empty_axes(ax: plt.Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_soups_vs_ingredients(runs: pd.DataFrame, soups: pd.DataFrame, path: str) -> None:
    """Model-soups figure: every ingredient (val vs test accuracy) against the soups and the ensemble. Error
    bars: the paired 95 % interval of each soup's test accuracy against the best individual's."""
    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    ok = runs[runs["status"] == "ok"]
    sns.scatterplot(data=ok, x="val_accuracy", y="test_accuracy", color="tab:green", marker="D", s=40,
                    label="fine-tuned ingredients", ax=ax)
    best = best_run(runs)
    if best is not None:
        ax.axhline(best.test_accuracy, ls="--", lw=1, color="grey", label="best individual (by val)")
    means = soups[~soups.recipe.isin(BASELINE_RECIPES)]
    columns = ["val_accuracy", "test_accuracy", "ensemble_val_accuracy", "ensemble_test_accuracy"]
    columns += [c for c in ("acc_diff_pt", "acc_diff_pt_low", "acc_diff_pt_high") if c in means]
    means = means.groupby("soup", sort=False)[columns].mean().reset_index()
    palette = sns.color_palette("tab10", max(1, len(means)))
    markers = "osP^vX*<>h"
    for index, soup in enumerate(means.itertuples()):
        error = None
        if "acc_diff_pt" in means and soup.acc_diff_pt == soup.acc_diff_pt:
            error = [[(soup.acc_diff_pt - soup.acc_diff_pt_low) / 100], [(soup.acc_diff_pt_high - soup.acc_diff_pt) / 100]]
        ax.errorbar(soup.val_accuracy, soup.test_accuracy, yerr=error, fmt=markers[index % len(markers)], ms=10,
                    capsize=4, color=palette[index], label=soup.soup)
    uniform = means[means.soup == "uniform"]
    if len(uniform) and uniform.ensemble_test_accuracy.notna().all():
        ax.scatter(uniform.ensemble_val_accuracy, uniform.ensemble_test_accuracy, marker="X", s=120,
                   color="black", label="logit ensemble of all (k passes)")
    ax.set(xlabel="validation accuracy", ylabel="test accuracy",
           title="Soups vs their ingredients (bars: paired 95 % interval vs best)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)


def plot_val_heatmap(runs: pd.DataFrame, axes: list[str], path: str) -> None:
    """Validation accuracy over two grid axes (mean over the other axes), as in the pruned-soup paper."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    columns = [f"hp_{a}" for a in axes]
    ok = runs[runs["status"] == "ok"]
    if not all(c in ok for c in columns) or ok.empty:
        empty_axes(ax, f"no runs vary {axes}")
    else:
        table = ok.pivot_table(index=columns[0], columns=columns[1], values="val_accuracy", aggfunc="mean")
        sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis", ax=ax, cbar_kws={"label": "val accuracy"})
        ax.set(xlabel=axes[1], ylabel=axes[0], title="Validation accuracy of the fine-tunes")
    save_figure(fig, path)


def plot_greedy_ingredients(runs: pd.DataFrame, trace: pd.DataFrame, path: str) -> None:
    """Greedy soup test accuracy as ingredients are accepted (sorted, and random with mean ± sd)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    steps = trace[trace.recipe.isin(["greedy", "greedy_random"]) & trace.accepted.astype(bool)] if len(trace) else trace
    if steps.empty:
        empty_axes(ax, "no greedy soup in the config")
    else:
        sns.lineplot(data=steps, x="n_ingredients", y="test_accuracy", hue="soup", errorbar="sd", marker="o", ax=ax)
        best = best_run(runs)
        if best is not None:
            ax.axhline(best.test_accuracy, ls="--", color="grey", label="best individual (by val)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="number of ingredients", ylabel="test accuracy", title="Greedy soup vs number of ingredients")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_pruned_passes(trace: pd.DataFrame, path: str) -> None:
    """Pruned soup test accuracy and ingredient count after each pass (pass 0 = the uniform start)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ends = trace[trace.kind.isin(["start", "pass_end"])] if "kind" in trace else pd.DataFrame()
    if ends.empty:
        empty_axes(left, "no pruned soup in the config")
        empty_axes(right, "")
    else:
        sns.lineplot(data=ends, x="pass", y="test_accuracy", hue="soup", errorbar="sd", marker="o", ax=left)
        sns.lineplot(data=ends, x="pass", y="n_ingredients", hue="soup", errorbar="sd", marker="o", ax=right)
        for ax in (left, right):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        left.set(xlabel="passes", ylabel="test accuracy", title="Pruned soup accuracy vs passes")
        right.set(xlabel="passes", ylabel="ingredients", title="Pruned soup size vs passes")
    save_figure(fig, path)


def plot_wise_ft(runs: pd.DataFrame, trace: pd.DataFrame, path: str) -> None:
    """WiSE-FT: val and test accuracy along θ(α) = (1 − α)·θ0 + α·θ_base, the chosen α circled."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    curve = trace[trace.recipe == "wise_ft"] if len(trace) and "alpha" in trace else pd.DataFrame()
    if curve.empty:
        empty_axes(ax, "no wise_ft soup in the config")
    else:
        long = curve.melt(id_vars=["soup", "alpha", "accepted"], value_vars=["val_accuracy", "test_accuracy"],
                          var_name="split", value_name="accuracy")
        sns.lineplot(data=long, x="alpha", y="accuracy", hue="soup", style="split", marker="o", ax=ax)
        chosen = curve[curve.accepted.astype(bool)]
        ax.scatter(chosen.alpha, chosen.test_accuracy, s=160, facecolors="none", edgecolors="black",
                   label="chosen on val (test)")
        best = best_run(runs)
        if best is not None:
            ax.axhline(best.test_accuracy, ls="--", color="grey", label="best individual (by val), test")
        ax.set(xlabel="α (0 = the init, 1 = the base soup)", ylabel="accuracy", title="WiSE-FT interpolation")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_replicates(table: pd.DataFrame, path: str) -> None:
    """Forest plot: per soup, each replicate's paired 95 % interval against its best individual and the pooled
    one (black, bold), in accuracy points; a soup wins where the pooled bar and at least two others clear 0."""
    soups = list(dict.fromkeys(table.soup))
    seeds = sorted(int(seed) for seed in table[table.scope == "replicate"].seed.unique())
    fig, ax = plt.subplots(figsize=(9, min(0.16 * len(soups) * (len(seeds) + 2) + 1.5, 30)))
    palette = sns.color_palette("tab10", max(1, len(seeds)))
    step = 1.0 / (len(seeds) + 2)
    for index, soup in enumerate(soups):
        rows = table[table.soup == soup]
        for offset, (seed, color) in enumerate(zip(seeds, palette)):
            row = rows[(rows.scope == "replicate") & (rows.seed == seed)].iloc[0]
            _interval_bar(ax, row, index + offset * step, dict(color=color, lw=1.2, ms=4),
                          f"replicate seed {seed}" if index == 0 else None)
        row = rows[rows.scope == "pooled"].iloc[0]
        _interval_bar(ax, row, index + len(seeds) * step, dict(color="black", lw=2.5, ms=6),
                      "pooled" if index == 0 else None)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks([i + len(seeds) * step / 2 for i in range(len(soups))], soups)
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy − best individual's (points), 95 % paired interval",
           title=f"Soups over {len(seeds)} replicates")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)


def _interval_bar(ax: plt.Axes, row, y: float, style: dict, label: str | None) -> None:
    ax.errorbar(row.acc_diff_pt, y, xerr=[[row.acc_diff_pt - row.acc_diff_pt_low], [row.acc_diff_pt_high - row.acc_diff_pt]],
                fmt="o", capsize=3, color=style["color"], lw=style["lw"], ms=style["ms"], label=label)


def plot_soup_figures(runs_path: str, soups_path: str, trace_path: str, outputs: dict[str, str], heatmap_axes: list[str]) -> None:
    runs, soups, trace = (pd.read_parquet(p) for p in (runs_path, soups_path, trace_path))
    sns.set_theme(style="whitegrid")
    plot_soups_vs_ingredients(runs, soups, outputs["soups"])
    plot_val_heatmap(runs, heatmap_axes, outputs["heatmap"])
    plot_greedy_ingredients(runs, trace, outputs["greedy"])
    plot_pruned_passes(trace, outputs["pruned"])
    plot_wise_ft(runs, trace, outputs["wise_ft"])


def plot_learning_curves(history_paths: list[str], path: str) -> None:
    """Train loss and learning rate per epoch of every fine-tune (each run's history.parquet)."""
    frames = [frame for frame in map(pd.read_parquet, history_paths) if len(frame)]
    history = pd.concat(frames, ignore_index=True) if frames else None
    sns.set_theme(style="whitegrid")
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(11, 4))
    if history is None:
        empty_axes(loss_ax, "no run finished an epoch")
        empty_axes(lr_ax, "")
    else:
        legend = history.run_id.nunique() <= 12
        sns.lineplot(history, x="epoch", y="train_loss", hue="run_id", marker="o", ax=loss_ax, legend=legend)
        sns.lineplot(history, x="epoch", y="lr", hue="run_id", ax=lr_ax, legend=False)
        loss_ax.set(title="train loss per epoch", ylabel="mean train loss")
        lr_ax.set(title="learning rate at each epoch's end", ylabel="lr")
        loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if legend:
            loss_ax.legend(fontsize=7, title="run")
    save_figure(fig, path)
