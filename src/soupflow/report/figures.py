"""seaborn figures of the model-soup papers, drawn from the Parquet tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from soupflow.plan.catalog import HYPERPARAMETER_NAMES, RECIPES  # noqa: E402
from soupflow.store.io import atomic_path  # noqa: E402
from soupflow.store.tables import best_run, read_history  # noqa: E402

#: recipes that are baselines or ablations: the soup figures leave them out
BASELINE_RECIPES = [name for name, traits in RECIPES.items() if traits.baseline]


# ---------------------------------------------------------------- one style per soup, the same in every figure
@dataclass(frozen=True)
class Style:
    """How a soup is drawn: a colour (RGB in 0..1) and a matplotlib marker."""

    color: tuple[float, float, float]
    marker: str


_TAB20, _TAB20B, _TAB20C = (matplotlib.colormaps[name].colors for name in ("tab20", "tab20b", "tab20c"))
#: one palette of 16 hues, each as (dark, light): tab20's ten, then indigo, olive, brown, purple and plum of
#: tab20b, then tab20c's dark grey
HUES: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    *((_TAB20[2 * i], _TAB20[2 * i + 1]) for i in range(10)), *((_TAB20B[4 * i], _TAB20B[4 * i + 2]) for i in range(5)),
    (_TAB20C[16], _TAB20C[18]))
#: the palette's colours in the order they are handed out: every dark shade, then every light one
PALETTE = tuple(dark for dark, _ in HUES) + tuple(light for _, light in HUES)
#: crossed with the palette: one marker per recipe of the catalog, then more for named variants
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">", "h", "p", "d", "H", "8", "1", "2", "3")
RECIPE_ORDER = tuple(RECIPES)


def soup_styles(names: Iterable[str], recipe_of: Mapping[str, str] | None = None) -> dict[str, Style]:
    """A distinct style for each soup name, fixed by the catalog and not by which soups a config has: a recipe
    used under its own name gets the colour and marker of its position in ``RECIPES``, so ``uniform`` looks the
    same in every figure of every experiment. An entry that renames a recipe (``recipe_of``: soup name →
    recipe, e.g. ``uniform_bn`` → ``uniform``) gets its recipe's hue in the other shade, and its recipe's
    marker (the first such variant, by name) or the next markers after the catalog's (further ones). A name
    that is no recipe's, with no ``recipe_of`` entry, takes the styles after the catalog's, in name order."""
    recipe_of = dict(recipe_of or {})
    styles: dict[str, Style] = {}
    variants: dict[str, int] = {}
    spare = len(RECIPE_ORDER)  # the next hue and marker after the catalog's
    for name in sorted(set(names), key=lambda n: (n not in RECIPES, n)):
        recipe = name if name in RECIPES else recipe_of.get(name)
        if recipe in RECIPES:
            index = RECIPE_ORDER.index(recipe)
            dark, light = HUES[index % len(HUES)]
            if name == recipe:
                styles[name] = Style(dark, MARKERS[index % len(MARKERS)])
                continue
            nth = variants[recipe] = variants.get(recipe, -1) + 1
            marker = MARKERS[index if nth == 0 else (len(RECIPE_ORDER) + nth - 1) % len(MARKERS)]
            styles[name] = Style(light, marker)  # the recipe's hue, light: a variant of it
        else:
            styles[name] = Style(PALETTE[spare % len(PALETTE)], MARKERS[spare % len(MARKERS)])
            spare += 1
    return styles


def styles_of(soups: pd.DataFrame) -> dict[str, Style]:
    """``soup_styles`` of the soups of a soups or trace table (columns ``soup`` and ``recipe``)."""
    if soups.empty or "soup" not in soups:
        return {}
    return soup_styles(soups["soup"].unique(), dict(zip(soups["soup"], soups["recipe"])) if "recipe" in soups else None)


def legend_outside(ax: plt.Axes, order: list[str] | None = None, **options) -> None:
    """The axes' legend to the right of the data, never over it; the labels in ``order`` in that order after
    the others, when given."""
    handles, labels = ax.get_legend_handles_labels()
    if order:
        rank = {label: i for i, label in enumerate(order)}
        pairs = sorted(zip(handles, labels), key=lambda pair: rank.get(pair[1], -1))  # stable: the others first
        handles, labels = [h for h, _ in pairs], [label for _, label in pairs]
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  fontsize=8, **options)


def save_figure(fig: plt.Figure, path: str) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")  # legends outside the axes included
    plt.close(fig)


def empty_axes(ax: plt.Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_soups_vs_ingredients(runs: pd.DataFrame, soups: pd.DataFrame, path: str) -> None:
    """Model-soups figure: every ingredient (val vs test accuracy) against the soups and the ensemble. Error
    bars: the paired 95 % interval of each soup's test accuracy against the best individual's."""
    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    ok = runs[runs["status"] == "ok"]
    ax.scatter(ok["val_accuracy"], ok["test_accuracy"], color="0.55", marker=".", s=70, zorder=1,
               label="ingredients")  # neutral: every colour and marker of the palette is a soup's
    best = best_run(runs)
    if best is not None:
        ax.axhline(best.test_accuracy, ls="--", lw=1, color="grey", label="best individual (by val)")
    means = soups[~soups.recipe.isin(BASELINE_RECIPES)]
    columns = ["val_accuracy", "test_accuracy", "ensemble_val_accuracy", "ensemble_test_accuracy"]
    columns += [c for c in ("acc_diff_pt", "acc_diff_pt_low", "acc_diff_pt_high") if c in means]
    styles = styles_of(soups)
    means = means.groupby("soup", sort=False)[columns].mean().reset_index()
    # soups at the same point (e.g. greedy and pruned keeping the same ingredients) nest: larger markers first
    place = means[["val_accuracy", "test_accuracy"]].round(6).astype(str).agg(" ".join, axis=1)
    means["size"] = 9 + 4 * (means.groupby(place).cumcount(ascending=False))
    for soup in means.sort_values("size", ascending=False, kind="stable").itertuples():
        error = None
        if "acc_diff_pt" in means and soup.acc_diff_pt == soup.acc_diff_pt:
            error = [[(soup.acc_diff_pt - soup.acc_diff_pt_low) / 100], [(soup.acc_diff_pt_high - soup.acc_diff_pt) / 100]]
        style = styles[soup.soup]
        ax.errorbar(soup.val_accuracy, soup.test_accuracy, yerr=error, fmt=style.marker, ms=soup.size, capsize=4,
                    color=style.color, markeredgecolor="black", markeredgewidth=0.5, alpha=0.9, label=soup.soup)
    uniform = means[means.soup == "uniform"]
    if len(uniform) and uniform.ensemble_test_accuracy.notna().all():
        ax.scatter(uniform.ensemble_val_accuracy, uniform.ensemble_test_accuracy, marker="X", s=120,
                   color="black", label="logit ensemble of all (k passes)")
    ax.set(xlabel="validation accuracy", ylabel="test accuracy",
           title="Soups vs their ingredients (bars: paired 95 % interval vs best)")
    legend_outside(ax, order=list(means.soup))
    save_figure(fig, path)


def plot_val_heatmap(runs: pd.DataFrame, axes: list[str], path: str) -> None:
    """Validation accuracy over two grid axes (mean over the other axes), as in the pruned-soup paper."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    columns = [f"hp_{a}" for a in axes]
    ok = runs[runs["status"] == "ok"]
    ok = ok.dropna(subset=columns) if all(c in ok for c in columns) else ok.iloc[:0]  # pool checkpoints: no hp
    if ok.empty:
        empty_axes(ax, f"no fine-tunes vary {axes}")
    else:
        table = ok.pivot_table(index=columns[0], columns=columns[1], values="val_accuracy", aggfunc="mean")
        sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis", ax=ax, cbar_kws={"label": "val accuracy"})
        ax.set(xlabel=axes[1], ylabel=axes[0], title="Validation accuracy of the fine-tunes")
    save_figure(fig, path)


def plot_greedy_ingredients(runs: pd.DataFrame, trace: pd.DataFrame, path: str) -> None:
    """Greedy soup test accuracy as ingredients are accepted (sorted, and random with mean ± sd)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = trace[trace.recipe.isin(["greedy", "greedy_random"]) & trace.accepted.astype(bool)] if len(trace) else trace
    if steps.empty:
        empty_axes(ax, "no greedy soup in the config")
    else:
        styled_lines(steps, "n_ingredients", "test_accuracy", ax)
        best = best_run(runs)
        if best is not None:
            ax.axhline(best.test_accuracy, ls="--", color="grey", label="best individual (by val)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="number of ingredients", ylabel="test accuracy", title="Greedy soup vs number of ingredients")
        legend_outside(ax)
    save_figure(fig, path)


def plot_pruned_passes(trace: pd.DataFrame, path: str) -> None:
    """Pruned soup test accuracy and ingredient count after each pass (pass 0 = the uniform start)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4))
    ends = trace[trace.kind.isin(["start", "pass_end"])] if "kind" in trace else pd.DataFrame()
    if ends.empty:
        empty_axes(left, "no pruned soup in the config")
        empty_axes(right, "")
    else:
        styled_lines(ends, "pass", "test_accuracy", left)
        styled_lines(ends, "pass", "n_ingredients", right)
        for ax in (left, right):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        left.set(xlabel="passes", ylabel="test accuracy", title="Pruned soup accuracy vs passes")
        right.set(xlabel="passes", ylabel="ingredients", title="Pruned soup size vs passes")
        legend_outside(right)
    save_figure(fig, path)


def plot_wise_ft(runs: pd.DataFrame, trace: pd.DataFrame, path: str) -> None:
    """WiSE-FT: val and test accuracy along θ(α) = (1 − α)·θ0 + α·θ_base, the chosen α circled."""
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    curve = trace[trace.recipe == "wise_ft"] if len(trace) and "alpha" in trace else pd.DataFrame()
    if curve.empty:
        empty_axes(ax, "no wise_ft soup in the config")
    else:
        styles = styles_of(curve)
        for soup, points in curve.groupby("soup", sort=True):
            points = points.sort_values("alpha")
            for split, dashes in (("val", "--"), ("test", "-")):
                ax.plot(points.alpha, points[f"{split}_accuracy"], ls=dashes, marker=styles[soup].marker,
                        color=styles[soup].color, label=f"{soup}, {split}")
        chosen = curve[curve.accepted.astype(bool)]
        ax.scatter(chosen.alpha, chosen.test_accuracy, s=160, facecolors="none", edgecolors="black",
                   label="chosen on val (test)")
        best = best_run(runs)
        if best is not None:
            ax.axhline(best.test_accuracy, ls="--", color="grey", label="best individual (by val), test")
        ax.set(xlabel="α (0 = the init, 1 = the base soup)", ylabel="accuracy", title="WiSE-FT interpolation")
        legend_outside(ax)
    save_figure(fig, path)


def _forest_values(pooled_row, alone: pd.DataFrame) -> list[float]:
    """Every x a soup's row of the forest plot draws: its intervals and each replicate's difference."""
    values = [pooled_row.acc_diff_pt_low, pooled_row.acc_diff_pt_high, pooled_row.t_low, pooled_row.t_high]
    return [v for v in values + list(alone[alone.soup == pooled_row.soup].acc_diff_pt) if pd.notna(v)]


def forest_panels(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The soups the forest plot draws on the soups' scale, and the baselines it draws apart: a baseline
    recipe (``RecipeTraits.baseline``, e.g. ``untrained``) whose row lies farther outside the range of the
    other soups' rows than that range is wide (at least a point), which would squeeze every real soup to a dot."""
    pooled, alone = table[table.scope == "pooled"], table[table.scope == "replicate"]
    rows = {row.soup: row for _, row in pooled.iterrows()}
    main = [soup for soup, row in rows.items() if row.recipe not in BASELINE_RECIPES]
    scale = [v for soup in main for v in _forest_values(rows[soup], alone)]
    if not scale:
        return list(rows), []
    low, high = min(scale), max(scale)
    margin = max(high - low, 1.0)
    apart = [soup for soup, row in rows.items() if soup not in main
             and any(v < low - margin or v > high + margin for v in _forest_values(row, alone))]
    return [soup for soup in rows if soup not in apart], apart


def plot_replicates(table: pd.DataFrame, path: str) -> None:
    """Forest plot of the pooled verdicts, in accuracy points against each replicate's best individual: per
    soup the hierarchical 95 % interval (black), the t interval over replicates (grey, below) and each
    replicate's difference (a dot per seed, above); the verdict follows the soup's name. Baselines far off the soups' scale (``forest_panels``) get a
    panel of their own, so the x axis fits the real soups."""
    pooled, alone = table[table.scope == "pooled"], table[table.scope == "replicate"]
    seeds = sorted(int(seed) for seed in alone.seed.unique())
    colors = dict(zip(seeds, sns.color_palette("tab10", max(1, len(seeds)))))
    panels = [names for names in forest_panels(table) if names]
    sizes = [len(names) + 1 for names in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, min(0.5 * sum(sizes) + 1.2, 30)), squeeze=False,
                             gridspec_kw={"height_ratios": sizes})
    for index, (ax, names) in enumerate(zip(axes[:, 0], panels)):
        for y, soup in enumerate(names):
            _forest_row(ax, pooled[pooled.soup == soup].iloc[0], alone[alone.soup == soup], y, colors,
                        labelled=index == 0 and y == 0)
        ax.axvline(0, color="grey", lw=1, ls="--")
        verdicts = dict(zip(pooled.soup, pooled.verdict))
        ax.set_yticks(range(len(names)), [f"{soup}  {verdicts[soup]}" if verdicts[soup] else soup for soup in names])
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlabel("test accuracy − best individual's (points)")
    axes[0, 0].set_title(f"Soups over {len(seeds)} replicates: 95 % intervals (seeds × test images)")
    if len(panels) > 1:
        axes[1, 0].set_title("baselines, on a scale of their own", fontsize=10)
    legend_outside(axes[0, 0])
    save_figure(fig, path)


def _forest_row(ax: plt.Axes, row, alone: pd.DataFrame, y: float, colors: dict, labelled: bool) -> None:
    _interval_bar(ax, row, y, dict(color="black", lw=2.5, ms=6), "pooled: seeds × images" if labelled else None)
    if pd.notna(row.t_low):
        ax.plot([row.t_low, row.t_high], [y + 0.25] * 2, color="grey", lw=1.2, marker="|",
                label="t over replicates" if labelled else None)
    for seed, diff in zip(alone.seed, alone.acc_diff_pt):
        ax.scatter(diff, y - 0.25, s=16, color=colors[int(seed)], zorder=3,
                   label=f"replicate seed {int(seed)}" if labelled else None)


def _interval_bar(ax: plt.Axes, row, y: float, style: dict, label: str | None) -> None:
    ax.errorbar(row.acc_diff_pt, y, xerr=[[row.acc_diff_pt - row.acc_diff_pt_low], [row.acc_diff_pt_high - row.acc_diff_pt]],
                fmt="o", capsize=3, color=style["color"], lw=style["lw"], ms=style["ms"], label=label)


def styled_lines(frame: pd.DataFrame, x: str, y: str, ax: plt.Axes) -> None:
    """One line per soup in its ``soup_styles`` style: the mean of ``y`` at each ``x`` (over a random-order
    recipe's repeats), with a ± sd band where there are repeats."""
    styles = styles_of(frame)
    for soup, points in frame.groupby("soup", sort=True):
        stats = points.groupby(x)[y].agg(["mean", "std"]).reset_index()
        ax.plot(stats[x], stats["mean"], marker=styles[soup].marker, color=styles[soup].color, label=soup)
        if stats["std"].notna().any():
            ax.fill_between(stats[x], stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0),
                            color=styles[soup].color, alpha=0.2, lw=0)


def plot_soup_figures(runs_path: str, soups_path: str, trace_path: str, outputs: dict[str, str], heatmap_axes: list[str]) -> None:
    runs, soups, trace = (pd.read_parquet(p) for p in (runs_path, soups_path, trace_path))
    sns.set_theme(style="whitegrid")
    plot_soups_vs_ingredients(runs, soups, outputs["soups"])
    plot_val_heatmap(runs, heatmap_axes, outputs["heatmap"])
    plot_greedy_ingredients(runs, trace, outputs["greedy"])
    plot_pruned_passes(trace, outputs["pruned"])
    plot_wise_ft(runs, trace, outputs["wise_ft"])


def varying_labels(runs: pd.DataFrame) -> dict[str, str]:
    """Each run's label: the hyperparameters that vary among ``runs`` (``hp_*`` columns of the runs table), as
    ``lr=0.05, ls=0.1, seed=1``; the run id where none varies or the table lacks the run."""
    columns = [f"hp_{name}" for name in HYPERPARAMETER_NAMES if f"hp_{name}" in runs]
    varying = [c for c in columns if runs[c].astype(str).nunique() > 1]

    def value(v) -> str:
        if v is None or v != v:
            return "–"
        return f"{v:g}" if isinstance(v, float) else str(v)

    return {row["run_id"]: ", ".join(f"{SHORT_NAMES.get(c[3:], c[3:])}={value(row[c])}" for c in varying) or row["run_id"]
            for _, row in runs.iterrows()}


#: shorter names of hyperparameters in learning-curve labels
SHORT_NAMES = {"label_smoothing": "ls", "weight_decay": "wd", "warmup_fraction": "warmup", "augmentation": "aug",
               "batch_size": "bs", "branch_epoch": "branch", "perturbation": "perturb"}
#: the hyperparameters that decide a run's learning-rate schedule
SCHEDULE_NAMES = ("lr", "schedule", "warmup_fraction", "epochs", "perturbation")


def plot_learning_curves(history_paths: list[str], path: str, runs_path: str | None = None) -> None:
    """Train loss and val accuracy per epoch of every fine-tune (each run's history.parquet), each line named
    by the hyperparameters that vary in the grid (from the runs table); the learning rate once per distinct
    schedule. Histories written before ``val_accuracy`` was recorded draw no val line."""
    frames = [frame for frame in map(read_history, history_paths) if len(frame)]
    history = pd.concat(frames, ignore_index=True) if frames else None
    runs = pd.read_parquet(runs_path) if runs_path else pd.DataFrame({"run_id": []})
    runs = runs[runs.run_id.isin(history.run_id)] if history is not None else runs
    sns.set_theme(style="whitegrid")
    fig, (loss_ax, val_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    if history is None:
        for ax in (loss_ax, val_ax, lr_ax):
            empty_axes(ax, "no run finished an epoch" if ax is loss_ax else "")
        save_figure(fig, path)
        return
    labels = {**{run: run for run in history.run_id.unique()}, **varying_labels(runs)}
    history["run"] = history.run_id.map(labels)
    order = sorted(history.run.unique())
    palette = dict(zip(order, sns.color_palette("tab20" if len(order) <= 20 else "husl", len(order))))
    legend = len(order) <= 24
    for run, curve in history.groupby("run", sort=True):
        curve = curve.sort_values("epoch")
        loss_ax.plot(curve.epoch, curve.train_loss, marker="o", color=palette[run], label=run)
        val_ax.plot(curve.epoch, curve.val_accuracy, marker="o", color=palette[run])
    if history.val_accuracy.isna().all():
        val_ax.text(0.5, 0.5, "no val accuracy per epoch\n(histories written before it was recorded)",
                    ha="center", va="center", transform=val_ax.transAxes)
    _plot_schedules(history, runs, lr_ax)
    loss_ax.set(title="train loss per epoch", xlabel="epoch", ylabel="mean train loss")
    val_ax.set(title="val accuracy after each epoch", xlabel="epoch", ylabel="val accuracy")
    lr_ax.set(title="learning rate at each epoch's end (one line per schedule)", xlabel="epoch", ylabel="lr")
    for ax in (loss_ax, val_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if legend:
        fig.legend(*loss_ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(4, len(order)), fontsize=8, title="run (the hyperparameters that vary)")
    save_figure(fig, path)


def _plot_schedules(history: pd.DataFrame, runs: pd.DataFrame, ax: plt.Axes) -> None:
    """One line per distinct learning-rate curve, named by the schedule's hyperparameters that vary (else by
    how many runs share it)."""
    shared: dict[tuple, list[str]] = {}
    for run_id, curve in history.groupby("run_id", sort=True):
        points = curve.sort_values("epoch")
        shared.setdefault(tuple(zip(points.epoch, points.lr.round(12))), []).append(run_id)
    columns = [f"hp_{name}" for name in SCHEDULE_NAMES if f"hp_{name}" in runs]
    named = varying_labels(runs[["run_id", *columns]]) if len(runs) else {}
    for index, (curve, ids) in enumerate(sorted(shared.items())):
        epochs, lrs = zip(*curve)
        label = named.get(ids[0], "") if named.get(ids[0]) != ids[0] else ""
        label = f"{label} ({len(ids)} runs)" if label else f"{len(ids)} runs"
        ax.plot(epochs, lrs, marker="o", color=PALETTE[index % len(PALETTE)], label=label)
    legend_outside(ax)


def _on_scale(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows the shift figure draws, and the soups it names instead: those whose difference on either axis
    lies farther outside the runs' and the ensemble's span than that span is wide (at least 2 points), a
    collapsed soup that would squeeze every other point to a dot."""
    anchors = rows[rows.kind != "soup"]
    off = pd.Series(False, index=rows.index)
    for column in ("test_acc_diff_pt", "shift_acc_diff_pt"):
        low, high = anchors[column].min(), anchors[column].max()
        margin = max(high - low, 2.0)
        off |= (rows.kind == "soup") & ((rows[column] < low - margin) | (rows[column] > high + margin))
    return rows[~off], rows[off]


def plot_shift(shift: pd.DataFrame, path: str) -> None:
    """In distribution vs under shift, one panel per shift set: each model's paired difference to the best run
    on the test split (x) and on the shift set (y), in points, with both 95 % intervals as bars; the runs in
    grey, the runs' ensemble in black, every soup in its style; a collapsed soup far off that scale is named in a
    line below instead (``_on_scale``). Above the diagonal: a gain that grows under shift (the soups papers'
    robustness claim); above zero on y: better than the best run on shifted images."""
    sets = list(dict.fromkeys(shift.shift_set))
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(5.5 * max(1, len(sets)) + 2.5, 5), squeeze=False)
    if not sets:
        empty_axes(axes[0, 0], "no usable run")
    shift = shift[~shift.recipe.isin(BASELINE_RECIPES)]  # best_individual is the best run's point
    styles = styles_of(shift[shift.kind == "soup"].rename(columns={"model": "soup"}))
    for ax, name in zip(axes[0], sets):
        rows = shift[shift.shift_set == name].sort_values("kind", key=lambda kind: kind != "run", kind="stable")  # runs below
        rows, off = _on_scale(rows)
        if len(off):
            ax.text(0.0, -0.13, "off the scale (test, shifted): " + ", ".join(
                f"{row.model} ({row.test_acc_diff_pt:+.1f}, {row.shift_acc_diff_pt:+.1f})" for row in off.itertuples()),
                transform=ax.transAxes, fontsize=8, va="top", ha="left", color="0.3", wrap=True)
        for row in rows.itertuples():
            style = (dict(color="0.6", fmt=".", ms=8, alpha=0.5, lw=0.7) if row.kind == "run" else
                     dict(color="black", fmt="X", ms=10) if row.kind == "ensemble" else
                     dict(color=styles[row.model].color, fmt=styles[row.model].marker, ms=9, markeredgecolor="black",
                          markeredgewidth=0.5))
            label = {"run": "runs", "ensemble": "logit ensemble of the runs"}.get(row.kind, row.model)
            style = {"alpha": 0.9, "lw": 1, **style}
            ax.errorbar(row.test_acc_diff_pt, row.shift_acc_diff_pt, capsize=3,
                        xerr=[[row.test_acc_diff_pt - row.test_acc_diff_pt_low], [row.test_acc_diff_pt_high - row.test_acc_diff_pt]],
                        yerr=[[row.shift_acc_diff_pt - row.shift_acc_diff_pt_low], [row.shift_acc_diff_pt_high - row.shift_acc_diff_pt]],
                        label=label if row.kind != "run" or row.best else None, **style)
        ax.axhline(0, color="grey", lw=1, ls="--")
        ax.axvline(0, color="grey", lw=1, ls="--")
        low, high = ax.get_xlim()
        ax.plot([low, high], [low, high], color="grey", lw=0.8, ls=":", label="same gain in and out")
        ax.set_xlim(low, high)
        best = rows[rows.best].iloc[0]
        ax.set(xlabel=f"test − best run's (points; best {100 * best.test_accuracy:.2f} %)",
               ylabel=f"{name} − best run's (points; best {100 * best.shift_accuracy:.2f} %)",
               title=f"{name}: {int(best.images)} images")
    fig.suptitle("In distribution vs under shift: paired differences to the best run, 95 % intervals")
    legend_outside(axes[0, -1])
    save_figure(fig, path)
