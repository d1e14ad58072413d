"""Explicit Parquet schemas: every run's one-row table has the same column types, whatever its values.

Without a schema pyarrow infers types per file, so a column that is null in one run (``hp_branch_epoch`` of a
grid run) and an integer in another (a branching run) gets two types, and readers of the whole folder as one
data set (``pyarrow.dataset``, polars, DuckDB on ``results/runs/*/metrics.parquet``) fail.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

#: The type of every hyperparameter (keys: ``config.HYPERPARAMETERS``; tests/test_io.py checks they agree).
HYPERPARAMETER_TYPES: dict[str, pa.DataType] = {
    "lr": pa.float64(), "weight_decay": pa.float64(), "epochs": pa.int64(), "batch_size": pa.int64(),
    "label_smoothing": pa.float64(), "augmentation": pa.string(), "optimizer": pa.string(),
    "momentum": pa.float64(), "nesterov": pa.bool_(), "schedule": pa.string(), "warmup_fraction": pa.float64(),
    "seed": pa.int64(), "branch_epoch": pa.int64(), "perturbation": pa.string(), "bn_statistics": pa.string(),
    "data_fraction": pa.float64(),
}

RUN_SCHEMA = pa.schema(
    [("run_id", pa.string())]
    + [(f"hp_{name}", kind) for name, kind in HYPERPARAMETER_TYPES.items()]
    + [("status", pa.string()), ("error", pa.string()), ("resumed_from_step", pa.int64()),
       ("epochs_done", pa.int64()), ("train_loss", pa.float64()), ("train_seconds", pa.float64()),
       ("train_images_per_second", pa.float64()), ("n_parameters", pa.int64()), ("device", pa.string())]
    + [(f"{split}_{name}", pa.float64()) for split in ("val", "test") for name in ("accuracy", "loss")]
)


def run_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Run rows as a table of ``RUN_SCHEMA``; a row with another set of columns is a bug, not a new column."""
    for row in rows:
        if set(row) != set(RUN_SCHEMA.names):
            raise ValueError(f"run row columns differ from RUN_SCHEMA: extra {sorted(set(row) - set(RUN_SCHEMA.names))}, "
                             f"missing {sorted(set(RUN_SCHEMA.names) - set(row))}")
    return pa.Table.from_pylist(rows, schema=RUN_SCHEMA)


HISTORY_SCHEMA = pa.schema([("run_id", pa.string()), ("epoch", pa.int64()), ("train_loss", pa.float64()),
                            ("lr", pa.float64()), ("seconds", pa.float64()), ("images_per_second", pa.float64())])


def history_table(run_id: str, rows: list[dict[str, float]]) -> pa.Table:
    """A run's learning curve (``train.TrainResult.history``) as a table of ``HISTORY_SCHEMA``."""
    return pa.Table.from_pylist([{"run_id": run_id, **row} for row in rows], schema=HISTORY_SCHEMA)
