"""Explicit Parquet schemas: every run's one-row table has the same column types, whatever its values.

Without a schema pyarrow infers types per file, so a column that is null in one run (``hp_branch_epoch`` of a
grid run) and an integer in another (a branching run) gets two types, and readers of the whole folder as one
data set (``pyarrow.dataset``, polars, DuckDB on ``results/runs/*/metrics.parquet``) fail.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from soupflow.plan.catalog import HYPERPARAMETER_NAMES, HYPERPARAMETERS
from soupflow.store.io import atomic_write_parquet

ARROW_TYPES = {float: pa.float64(), int: pa.int64(), str: pa.string(), bool: pa.bool_()}
#: The column type of every hyperparameter, from its kind in the catalog.
HYPERPARAMETER_TYPES: dict[str, pa.DataType] = {hp.name: ARROW_TYPES[hp.kind] for hp in HYPERPARAMETERS}

NAN = float("nan")


@dataclass
class RunMetrics:
    """A fine-tune's metrics row (``runs/<run_id>/metrics.parquet``): ``RUN_SCHEMA`` is made from these fields,
    the hyperparameters spread as ``hp_<name>`` columns after ``run_id``. Scores stay NaN unless the job sets
    them (a failed run: its model would score as the init); ``ema_*`` stay null for a run without a moving
    average of its weights (absent from metrics written before it was added: the runs table aligns by name)."""

    run_id: str
    hp: dict[str, Any]
    status: str
    error: str
    resumed_from_step: int
    epochs_done: int
    train_loss: float
    train_seconds: float
    train_images_per_second: float
    n_parameters: int
    device: str
    images_skipped: int = 0
    val_accuracy: float = NAN
    val_loss: float = NAN
    test_accuracy: float = NAN
    test_loss: float = NAN
    ema_val_accuracy: float | None = None
    ema_val_loss: float | None = None
    ema_test_accuracy: float | None = None
    ema_test_loss: float | None = None
    source: str | None = None  # an outside checkpoint's file (config section pool); null for the grid's runs

    @classmethod
    def outside(cls, run_id: str, source: str, n_parameters: int, device: str) -> RunMetrics:
        """The row of an outside checkpoint (config section ``pool``): no hyperparameter of the grid's and no
        training here (no steps, epochs or seconds; train loss NaN); its scores are set as a run's are."""
        return cls(run_id, dict.fromkeys(HYPERPARAMETER_NAMES), "ok", "", resumed_from_step=0, epochs_done=0,
                   train_loss=NAN, train_seconds=0.0, train_images_per_second=0.0, n_parameters=n_parameters,
                   device=device, source=source)

    def set_scores(self, prefix: str, accuracy: float, loss: float) -> None:
        """``<prefix>_accuracy`` and ``<prefix>_loss`` (prefix ``val``, ``test``, ``ema_val``, ``ema_test``)."""
        setattr(self, f"{prefix}_accuracy", accuracy)
        setattr(self, f"{prefix}_loss", loss)

    def columns(self) -> dict[str, Any]:
        """The row as ``RUN_SCHEMA``'s columns."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        hp = values.pop("hp")
        return {"run_id": values.pop("run_id"), **{f"hp_{k}": v for k, v in hp.items()}, **values}


#: Arrow types of RunMetrics' field annotations (``from __future__ import annotations``: they are strings)
_FIELD_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "float | None": pa.float64(),
                "str | None": pa.string()}
RUN_SCHEMA = pa.schema(
    [("run_id", pa.string())]
    + [(f"hp_{name}", kind) for name, kind in HYPERPARAMETER_TYPES.items()]
    + [(f.name, _FIELD_TYPES[f.type]) for f in fields(RunMetrics) if f.name not in ("run_id", "hp")]
)


def metrics_row_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A run's metrics row (or several) as a table of ``RUN_SCHEMA``; a row with another set of columns is a bug, not a new column."""
    for row in rows:
        if set(row) != set(RUN_SCHEMA.names):
            raise ValueError(f"run row columns differ from RUN_SCHEMA: extra {sorted(set(row) - set(RUN_SCHEMA.names))}, "
                             f"missing {sorted(set(RUN_SCHEMA.names) - set(row))}")
    return pa.Table.from_pylist(rows, schema=RUN_SCHEMA)


#: A run's learning curve, one row per epoch. ``val_accuracy`` (the epoch's weights on the val split) is absent
#: from histories written before it was added: readers take it as missing (``read_history``).
HISTORY_SCHEMA = pa.schema([("run_id", pa.string()), ("epoch", pa.int64()), ("train_loss", pa.float64()),
                            ("lr", pa.float64()), ("seconds", pa.float64()), ("images_per_second", pa.float64()),
                            ("val_accuracy", pa.float64())])


#: A run's kept epoch checkpoints (``ingredients: epochs``): ``runs/<run_id>/epochs.parquet``; ``path`` is
#: relative to the run's folder.
EPOCH_SCHEMA = pa.schema([("run_id", pa.string()), ("epoch", pa.int64()), ("path", pa.string()),
                          ("val_accuracy", pa.float64()), ("val_loss", pa.float64())])


def history_table(run_id: str, rows: list[dict[str, float]]) -> pa.Table:
    """A run's learning curve (``train.TrainResult.history``) as a table of ``HISTORY_SCHEMA``."""
    return pa.Table.from_pylist([{"run_id": run_id, **row} for row in rows], schema=HISTORY_SCHEMA)


def read_history(path: str) -> pd.DataFrame:
    """A run's ``history.parquet`` with every column of ``HISTORY_SCHEMA``; those an older file lacks
    (``val_accuracy``) are missing values."""
    frame = pd.read_parquet(path)
    for name in HISTORY_SCHEMA.names:
        if name not in frame:
            frame[name] = float("nan")
    return frame[HISTORY_SCHEMA.names + [c for c in frame if c not in HISTORY_SCHEMA.names]]


def _paired(prefix: str) -> list[tuple[str, pa.DataType]]:
    """The columns of ``stats.Comparison.columns(prefix)`` and its ``wins`` flag."""
    names = [f"{prefix}{name}{end}" for name in ("acc_diff_pt", "loss_diff") for end in ("", "_low", "_high")]
    return [(name, pa.float64()) for name in names + [f"{prefix}acc_p_mcnemar"]] + [(f"{prefix}wins", pa.bool_())]


#: One row per soup (per repeat) of a soup job: ``results/soups/<name>/metrics.parquet``, ``metrics/soups.parquet``.
#: Paired columns: "" = the soup vs the best individual, "ensemble_" = its ingredients' logit ensemble vs the
#: best individual, "bn_" = re-estimated vs averaged BatchNorm statistics (null unless bn: recompute).
SOUP_SCHEMA = pa.schema(
    [("soup", pa.string()), ("recipe", pa.string()), ("metric", pa.string()), ("bn", pa.string()),
     ("repeat", pa.int64()), ("ingredients", pa.list_(pa.string())), ("n_ingredients", pa.int64()),
     ("n_candidates", pa.int64())]
    + [(name, pa.float64()) for name in ("val_accuracy", "val_loss", "test_accuracy", "test_loss",
                                          "ensemble_val_accuracy", "ensemble_test_accuracy", "ensemble_test_loss")]
    + _paired("") + _paired("ensemble_") + _paired("bn_")
    + [("inference_passes_soup", pa.int64()), ("inference_passes_ensemble", pa.int64()),
       ("selection_passes", pa.int64()), ("options", pa.string()),
       ("precheck_midpoint_val_accuracy", pa.float64()), ("precheck_pair_val_accuracy", pa.float64()),
       ("soupability", pa.string()), ("precheck_midpoint_recompute_val_accuracy", pa.float64()),
       ("soupability_recompute", pa.string()), ("seconds", pa.float64()), ("val_images_scored", pa.int64()),
       ("val_images_per_pass", pa.int64())]
)

#: One row per candidate a recipe scored (greedy steps, pruned removals, wise_ft's α, …): ``trace.parquet``.
#: Recipe-specific columns are null elsewhere (``pass``: pruned; ``alpha``: wise_ft's α, the task-vector merges' λ; ``ratio_*``: model_stock).
TRACE_SCHEMA = pa.schema(
    [("soup", pa.string()), ("recipe", pa.string()), ("repeat", pa.int64()), ("pass", pa.int64()),
     ("step", pa.int64()), ("candidate", pa.string()), ("accepted", pa.bool_()), ("n_ingredients", pa.int64()),
     ("kind", pa.string())]
    + [(name, pa.float64()) for name in ("val_score", "val_accuracy", "val_loss", "test_accuracy", "test_loss")]
    + [("stopped_early", pa.bool_()), ("alpha", pa.float64()), ("ratio_min", pa.float64()),
       ("ratio_median", pa.float64()), ("ratio_max", pa.float64())]
)


#: Each soup against each replicate's best individual (``scope`` replicate, its ``seed``) and pooled over the
#: replicates (``scope`` pooled: mean test accuracy, the hierarchical interval in the paired columns, the
#: images-only interval ``images_*``, the t interval over replicates ``t_*``, each replicate's difference
#: ``replicate_diffs`` and their sign test ``sign_p`` (``stats.PooledComparison.columns``), ``wins_k`` of
#: ``replicates_n`` replicates won alone, the ``verdict``): ``metrics/pooled.parquet`` (rule pooled).
POOLED_SCHEMA = pa.schema(
    [("soup", pa.string()), ("recipe", pa.string()), ("scope", pa.string()), ("seed", pa.int64()),
     ("test_accuracy", pa.float64()), ("best_test_accuracy", pa.float64())]
    + _paired("") + [(name, pa.float64()) for name in ("images_low", "images_high", "t_mean", "t_low", "t_high")]
    + [("replicate_diffs", pa.list_(pa.float64())), ("sign_p", pa.float64()),
       ("wins_k", pa.int64()), ("loses_k", pa.int64()), ("replicates_n", pa.int64()),
       ("test_images", pa.int64()), ("verdict", pa.string())]
)


def typed_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as a table of ``schema``: absent columns are null; a column the schema lacks is a bug."""
    for row in rows:
        extra = set(row) - set(schema.names)
        if extra:
            raise ValueError(f"row has columns outside the table's schema: {sorted(extra)}")
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)


def _concatenated(paths: list[str]) -> pa.Table:
    """One table from many one-job tables; parts that share a schema (every run's, ``RUN_SCHEMA``) keep it
    exactly, parts of different schemas (tables written by older versions) are aligned by pandas."""
    tables = [t for t in (pq.read_table(p) for p in paths) if t.num_rows]
    if tables and all(t.schema.equals(tables[0].schema) for t in tables):
        return pa.concat_tables(tables)
    frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True) if tables else pd.DataFrame()
    return pa.Table.from_pandas(frame, preserve_index=False)


def concat_parquet(paths: list[str], out: str) -> pd.DataFrame:
    """One table from many one-job tables (soup traces, shift scores), written atomically."""
    table = _concatenated(paths)
    atomic_write_parquet(table, out)
    return table.to_pandas()


def write_soups_table(parts: list[str], out: str, shift: str | None = None) -> pd.DataFrame:
    """``metrics/soups.parquet``: every soup's rows (``parts``: the soups job's per-soup tables), with each shift
    set's scores of each soup joined where there are shift sets (``shift``: their table; ``with_shift_columns``)."""
    if shift is None:
        return concat_parquet(parts, out)
    table = with_shift_columns(_concatenated(parts).to_pandas(), pd.read_parquet(shift))
    atomic_write_parquet(pa.Table.from_pandas(table, preserve_index=False), out)
    return table


#: Columns the runs table adds to every run's metrics row: where the run's files are. A soup job reads a
#: run's checkpoint, cached outputs and kept epochs through these, never by a folder layout of its own; the
#: summary's retry command names the metrics file.
RUN_FILE_COLUMNS = {"metrics": "metrics_file", "model": "model_file", "outputs": "outputs_file",
                    "epochs": "epochs_file", "ema": "ema_file"}


def write_runs_table(metrics: list[str], files: dict[str, list[str]], out: str) -> pd.DataFrame:
    """``metrics/runs.parquet``: every run's one-row metrics table (``metrics``), plus a column per kind of
    file in ``files`` (a key of ``RUN_FILE_COLUMNS`` → one path per run, in the order of ``metrics``)."""
    table = _concatenated(metrics)
    for kind, paths in files.items():
        if len(paths) != table.num_rows:
            raise ValueError(f"{len(paths)} {kind} files for {table.num_rows} runs")
        table = table.append_column(RUN_FILE_COLUMNS[kind], pa.array([str(p) for p in paths], pa.string()))
    atomic_write_parquet(table, out)
    return table.to_pandas()


def best_run(runs: pd.DataFrame) -> pd.Series | None:
    """The best usable run of a runs table by val accuracy (ties by run id): the baseline every soup is
    compared with. None when no run is usable."""
    ok = runs[runs["status"] == "ok"]
    return ok.sort_values(["val_accuracy", "run_id"], ascending=[False, True]).iloc[0] if len(ok) else None


#: the columns of a shift set's scores (``soupflow.jobs.shift.shift_row``) the soups table carries for each set
SHIFT_COLUMNS = ("accuracy", "acc_diff_pt", "acc_diff_pt_low", "acc_diff_pt_high", "acc_p_mcnemar", "wins")


def with_shift_columns(soups: pd.DataFrame, shift: pd.DataFrame) -> pd.DataFrame:
    """The soups table with each shift set's scores of every soup (``shift_<set>_accuracy``,
    ``shift_<set>_acc_diff_pt`` and its interval, McNemar p, ``shift_<set>_wins``): one row per soup, as before."""
    for name, scores in shift[shift["kind"] == "soup"].groupby("shift_set", sort=True):
        columns = {f"shift_{column}": f"shift_{name}_{column}" for column in SHIFT_COLUMNS}
        part = scores.set_index("model")[list(columns)].rename(columns=columns)
        soups = soups.join(part, on="soup")
    return soups
