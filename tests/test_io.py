import pytest
import torch
from safetensors.torch import load_file

from soupflow.store import io
from soupflow.store.io import atomic_path, atomic_save_safetensors


def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "model.safetensors"
    atomic_save_safetensors({"w": torch.ones(3)}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "wb").write(b"half a checkpoint")
            raise RuntimeError("killed mid-write")
    assert torch.equal(load_file(str(target))["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_tied_weights_are_saved(tmp_path):
    shared = torch.randn(4, 4)
    atomic_save_safetensors({"a": shared, "b": shared}, tmp_path / "t.safetensors")
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert torch.equal(loaded["a"], loaded["b"])


def test_run_tables_of_grid_and_branching_runs_read_as_one_data_set(tmp_path):
    import pyarrow.dataset as ds

    from soupflow.plan.catalog import HYPERPARAMETER_NAMES as HYPERPARAMETERS
    from soupflow.store.tables import HYPERPARAMETER_TYPES, RUN_SCHEMA
    from soupflow.store.tables import metrics_row_table as run_table

    assert list(HYPERPARAMETER_TYPES) == list(HYPERPARAMETERS)
    base = {name: None for name in RUN_SCHEMA.names} | {"run_id": "run-a", "hp_lr": 0.1, "status": "ok"}
    grid = base | {"hp_branch_epoch": None, "hp_perturbation": None}
    branching = base | {"run_id": "run-b", "hp_branch_epoch": 2, "hp_perturbation": "salty1"}
    for row in (grid, branching):
        (tmp_path / row["run_id"]).mkdir()
        io.atomic_write_parquet(run_table([row]), tmp_path / row["run_id"] / "metrics.parquet")
    table = ds.dataset(str(tmp_path), format="parquet").to_table()
    assert table.schema.equals(RUN_SCHEMA) and sorted(table.column("hp_branch_epoch").to_pylist(), key=str) == [2, None]
    with pytest.raises(ValueError, match="extra \\['hp_new'\\]"):
        run_table([grid | {"hp_new": 1}])
