"""The short table a run ends with: ingredients, the best individual and every soup, on val and test."""

from __future__ import annotations

import pandas as pd

from soupflow.io import atomic_write_text


def summary_table(runs: pd.DataFrame, soups: pd.DataFrame) -> pd.DataFrame:
    """One row per soup (repeats as mean ± std), preceded by the ingredient range and the best individual."""
    ok = runs[runs["status"] == "ok"]
    rows = []
    if len(ok):
        best = ok.sort_values(["val_accuracy", "run_id"], ascending=[False, True]).iloc[0]
        rows.append({"method": f"ingredients ({len(ok)} ok of {len(runs)})", "n_ingredients": 1,
                     "val_accuracy": f"{ok.val_accuracy.min():.4f}–{ok.val_accuracy.max():.4f}",
                     "test_accuracy": f"{ok.test_accuracy.min():.4f}–{ok.test_accuracy.max():.4f}",
                     "test_loss": f"{ok.test_loss.min():.4f}–{ok.test_loss.max():.4f}",
                     "ensemble_test_accuracy": "", "passes": "1"})
        rows.append({"method": f"best individual by val ({best.run_id})", "n_ingredients": 1,
                     "val_accuracy": f"{best.val_accuracy:.4f}", "test_accuracy": f"{best.test_accuracy:.4f}",
                     "test_loss": f"{best.test_loss:.4f}", "ensemble_test_accuracy": "", "passes": "1"})
    for name, group in soups.groupby("soup", sort=False):
        rows.append({
            "method": f"{name} soup" + (f" ({len(group)} repeats)" if len(group) > 1 else ""),
            "n_ingredients": _mean_std(group.n_ingredients, 1),
            "val_accuracy": _mean_std(group.val_accuracy), "test_accuracy": _mean_std(group.test_accuracy),
            "test_loss": _mean_std(group.test_loss),
            "ensemble_test_accuracy": "" if group.ensemble_test_accuracy.isna().all() else _mean_std(group.ensemble_test_accuracy),
            "passes": f"1 (ensemble {_mean_std(group.inference_passes_ensemble, 0)})",
        })
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series, digits: int = 4) -> str:
    if len(values) == 1 or values.std() == 0:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def write_summary(runs_path: str, soups_path: str, out_text: str, out_csv: str) -> str:
    table = summary_table(pd.read_parquet(runs_path), pd.read_parquet(soups_path))
    text = "soupflow summary (selection on val, reported on test)\n" + table.to_string(index=False)
    atomic_write_text(text + "\n", out_text)
    atomic_write_text(table.to_csv(index=False), out_csv)
    return text
