"""The short table a run ends with: the ingredients, the best individual and every soup, on val and test,
each soup with its paired difference to the best individual (95 % bootstrap interval, McNemar p).

``summary.csv`` holds the numbers (one numeric column each); ``summary.txt`` is the same table formatted
for reading, the one printed at the end of a run.
"""

from __future__ import annotations

import pandas as pd

from soupflow.core.recipes import soupability_advice
from soupflow.core.stats import format_p
from soupflow.store.io import atomic_write_text
from soupflow.store.tables import best_run

LEGEND = """\
vs best: paired difference to the best individual (by val) on test, 95 % bootstrap interval over test
images, McNemar exact p. A soup WINS when its whole interval is above zero; with repeats, k/n repeats win."""


def summary_table(runs: pd.DataFrame, soups: pd.DataFrame) -> pd.DataFrame:
    """Numbers only: one row per soup (repeats averaged), after the ingredients and the best individual."""
    ok = runs[runs["status"] == "ok"]
    rows = []
    if len(ok):
        best = best_run(runs)
        rows.append({"method": f"ingredients ({len(ok)} ok of {len(runs)}): mean", "n_ingredients": 1.0,
                     "val_accuracy": ok.val_accuracy.mean(), "test_accuracy": ok.test_accuracy.mean(),
                     "test_accuracy_min": ok.test_accuracy.min(), "test_accuracy_max": ok.test_accuracy.max(),
                     "test_loss": ok.test_loss.mean()})
        rows.append({"method": f"best individual by val ({best.run_id})", "n_ingredients": 1.0,
                     "val_accuracy": best.val_accuracy, "test_accuracy": best.test_accuracy,
                     "test_loss": best.test_loss})
    for name, group in soups.groupby("soup", sort=False):
        row = {"method": f"{name} soup", "repeats": len(group), "n_ingredients": group.n_ingredients.mean(),
               "val_accuracy": group.val_accuracy.mean(), "test_accuracy": group.test_accuracy.mean(),
               "test_accuracy_std": group.test_accuracy.std() if len(group) > 1 else 0.0,
               "test_loss": group.test_loss.mean()}
        for prefix in ("", "ensemble_", "bn_"):
            if f"{prefix}acc_diff_pt" in group:
                for column in ("acc_diff_pt", "acc_diff_pt_low", "acc_diff_pt_high", "acc_p_mcnemar", "loss_diff"):
                    row[f"{prefix}{column}"] = group[f"{prefix}{column}"].mean()
                row[f"{prefix}wins"] = int(group[f"{prefix}wins"].astype(bool).sum())
        row |= {column: group[column].mean() for column in group if column.startswith("shift_")}  # shift sets
        row["ensemble_test_accuracy"] = group.ensemble_test_accuracy.mean()
        row["ensemble_passes"] = group.inference_passes_ensemble.mean()
        rows.append(row)
    return pd.DataFrame(rows)


def _versus(row: pd.Series, prefix: str = "") -> str:
    """'+0.42 pt [+0.18, +0.66], p = 0.003 WINS' (one repeat) or '+0.30 pt mean, 2/5 win' (repeats)."""
    diff = row.get(f"{prefix}acc_diff_pt")
    if diff is None or diff != diff:
        return ""
    if row.get("repeats", 1) > 1:
        return f"{diff:+.2f} pt mean, {int(row[f'{prefix}wins'])}/{int(row['repeats'])} win"
    text = (f"{diff:+.2f} pt [{row[f'{prefix}acc_diff_pt_low']:+.2f}, {row[f'{prefix}acc_diff_pt_high']:+.2f}], "
            f"{format_p(row[f'{prefix}acc_p_mcnemar'])}")
    return text + (" WINS" if row[f"{prefix}wins"] else "")


def _pct(value: float) -> str:
    return "" if value != value else f"{100 * value:.2f}"


def format_summary(table: pd.DataFrame) -> str:
    """The summary as aligned text (accuracies in %)."""
    shown = pd.DataFrame({
        "method": table.method,
        "n": [f"{n:.1f}".rstrip("0").rstrip(".") for n in table.n_ingredients],
        "val acc": table.val_accuracy.map(_pct),
        "test acc": [_pct(a) + (f" ± {100 * s:.2f}" if s == s and s > 0 else "")
                     for a, s in zip(table.test_accuracy, table.get("test_accuracy_std", pd.Series(float("nan"), index=table.index)))],
        "test loss": table.test_loss.map(lambda v: f"{v:.4f}"),
        "vs best (test accuracy)": [_versus(row) for _, row in table.iterrows()],
        "logit ensemble vs best": [_versus(row, "ensemble_") for _, row in table.iterrows()],
    })
    return shown.to_string(index=False)


def format_bn_effects(table: pd.DataFrame) -> str:
    """One line per ``bn: recompute`` soup: re-estimated BatchNorm statistics against averaged ones."""
    if "bn_acc_diff_pt" not in table:
        return ""
    lines = [f"  {row.method}: {_versus(row, 'bn_')}" for _, row in table.iterrows() if row.bn_acc_diff_pt == row.bn_acc_diff_pt]
    header = "BatchNorm statistics re-estimated on train images vs averaged, same weights (test accuracy):\n"
    return header + "\n".join(lines) + "\n" if lines else ""


def format_soupability(soups: pd.DataFrame) -> str:
    """One line when the midpoint of the two best runs collapses or loses more than a point on val: its score
    with averaged BatchNorm statistics and, for a BatchNorm model, re-estimated ones, and the advice that
    follows the re-estimated verdict where there is one (``core.recipes.soupability_advice``)."""
    if "soupability" not in soups or not len(soups):
        return ""
    checked = soups[soups.soupability != "n/a"]
    if not len(checked):
        return ""
    row = (checked[checked.bn == "keep"] if (checked.bn == "keep").any() else checked).iloc[0]
    recomputed = row.get("soupability_recompute")
    recomputed = recomputed if isinstance(recomputed, str) and recomputed != "n/a" else None
    advice = soupability_advice(row.soupability, recomputed)
    if not advice:
        return ""
    if recomputed is None:
        scores = f"{_pct(row.precheck_midpoint_val_accuracy)} % on val ({row.soupability})"
    else:
        scores = (f"{_pct(row.precheck_midpoint_val_accuracy)} % on val with averaged BatchNorm statistics "
                  f"({row.soupability}), {_pct(row.precheck_midpoint_recompute_val_accuracy)} % with re-estimated "
                  f"ones ({recomputed})")
    return (f"Soupability: the midpoint of the two best runs scores {scores} against "
            f"{_pct(row.precheck_pair_val_accuracy)} %; {advice}.\n")


def format_retry(runs: pd.DataFrame) -> str:
    """How to train the failed runs again, when there are any (diverged runs would only diverge again): force
    each one's metrics file, as the runs table names it (``metrics_file``)."""
    failed = runs[runs["status"] == "failed"]
    if failed.empty:
        return ""
    targets = " ".join(failed.metrics_file)
    return (f"{len(failed)} run(s) failed (see the error column of runs.parquet); to train them again:\n"
            f"  snakemake --cores N --forcerun {targets}\n")


POOLED_LEGEND = """\
pooled: each soup minus its replicate's best individual (by val) on test, averaged over every test image of
every replicate; 95 % hierarchical bootstrap interval (replicates resampled, and test images, an image several
replicates test moving with all its differences). t over seeds: 95 % Student-t interval over the per-replicate
differences. sign p: one-sided sign test of the replicates above zero. won / lost: replicates whose own interval
is above / below zero. WINS / LOSES: both intervals above / below zero. Positive on every replicate but an
interval touching zero: consistent, not shown beyond seed noise; more replicates narrow it."""


def _interval(row: pd.Series) -> str:
    return f"{row.acc_diff_pt:+.2f} [{row.acc_diff_pt_low:+.2f}, {row.acc_diff_pt_high:+.2f}]"


def _seeds_interval(row: pd.Series) -> str:
    return "n/a" if pd.isna(row.t_low) else f"[{row.t_low:+.2f}, {row.t_high:+.2f}]"


def format_pooled(table: pd.DataFrame) -> str:
    """The pooled section of the summary: one line per soup (pooled row of ``POOLED_SCHEMA``), with each
    replicate's difference in seed order."""
    pooled, alone = table[table.scope == "pooled"], table[table.scope == "replicate"]
    seeds = sorted(int(seed) for seed in alone.seed.unique())
    rows = [row for _, row in pooled.iterrows()]
    shown = pd.DataFrame({
        "soup": pooled.soup,
        "test acc": pooled.test_accuracy.map(_pct),
        "pooled vs best, pt [95 %]": [_interval(row) for row in rows],
        "t over seeds": [_seeds_interval(row) for row in rows],
        "per replicate": [" ".join(f"{d:+.2f}" for d in alone[alone.soup == row.soup].sort_values("seed").acc_diff_pt)
                          for row in rows],
        "sign p": pooled.sign_p.map(lambda p: f"{p:.3f}"),
        "won": [f"{int(row.wins_k)}/{int(row.replicates_n)}" for row in rows],
        "lost": [f"{int(row.loses_k)}/{int(row.replicates_n)}" for row in rows],
        "verdict": pooled.verdict,
    })
    return (f"soupflow pooled over {len(seeds)} replicates (seeds {', '.join(map(str, seeds))}): "
            f"selection on val, reported on test\n" + shown.to_string(index=False) + "\n" + POOLED_LEGEND)


SHIFT_LEGEND = """\
under shift: each model's accuracy on the in-distribution test split and on each shift set (data.shift_sets),
with its paired difference to the best run's on the same images (points, 95 % bootstrap interval; this
pipeline's images only: replicates say whether it holds across seeds). WINS: the interval above zero."""


def _shift_cell(row: pd.Series, split: str) -> str:
    """'61.23  +0.87 [+0.20, +1.50] WINS' (accuracy in %, then the paired difference to the best run)."""
    accuracy = _pct(row[f"{split}_accuracy"])
    if row["best"]:
        return f"{accuracy}  (the best run)"
    interval = f"{row[f'{split}_acc_diff_pt']:+.2f} [{row[f'{split}_acc_diff_pt_low']:+.2f}, {row[f'{split}_acc_diff_pt_high']:+.2f}]"
    return f"{accuracy}  {interval}" + (" WINS" if row[f"{split}_wins"] else "")


def format_shift(shift: pd.DataFrame) -> str:
    """The shift section of the summary: the best run, the runs' ensemble and every soup, one line each, on the
    test split and on each shift set (``soupflow.jobs.shift.shift_row``)."""
    shown = shift[shift["best"] | shift["kind"].isin(["ensemble", "soup"])]
    if shown.empty:
        return ""
    sets = list(dict.fromkeys(shown.shift_set))
    first = shown[shown.shift_set == sets[0]].set_index("model", drop=False)
    table = pd.DataFrame({"model": [f"{name} (best run)" if best else name for name, best in zip(first.model, first.best)],
                          "test": [_shift_cell(row, "test") for _, row in first.iterrows()]})
    for name in sets:
        rows = shown[shown.shift_set == name].set_index("model", drop=False).reindex(first.index)
        table[name] = [_shift_cell(row, "shift") if row.notna().any() else "" for _, row in rows.iterrows()]
    return ("\nUnder distribution shift (accuracy %, and vs the best run in points):\n" + table.to_string(index=False)
            + "\n" + SHIFT_LEGEND + "\n")


def write_summary(runs_path: str, soups_path: str, out_text: str, out_csv: str, shift_path: str | None = None) -> str:
    """The summary table as text (printed at the end of a run) and as numbers; with the shift sets' table
    (``shift_path``), a section on them."""
    runs, soups = pd.read_parquet(runs_path), pd.read_parquet(soups_path)
    table = summary_table(runs, soups)
    shift = format_shift(pd.read_parquet(shift_path)) if shift_path else ""
    text = ("soupflow summary (selection on val, reported on test)\n" + format_summary(table) + "\n"
            + format_bn_effects(table) + format_soupability(soups) + format_retry(runs) + LEGEND + "\n" + shift)
    text = text.rstrip("\n")
    atomic_write_text(text + "\n", out_text)
    atomic_write_text(table.to_csv(index=False), out_csv)
    return text
