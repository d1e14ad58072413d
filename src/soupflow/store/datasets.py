"""The prepared data of an experiment in either format (``data.format``): made by ``prepare``, read by
``open_data`` (the file's suffix says which)."""

from __future__ import annotations

from typing import Any

from soupflow.plan.config import DEFAULTS
from soupflow.store.data import TensorData, prepare_tensors
from soupflow.store.files import FileData, prepare_files
from soupflow.store.prepared import PreparedData

PREPARERS = {"tensors": prepare_tensors, "files": prepare_files}


def prepare(data_config: dict[str, Any], seed: int, out_data: str, out_splits: str,
            model_name: str | None = None) -> dict[str, int]:
    """Prepare the configured data set (keys it leaves out at their defaults) into ``out_data`` and the
    written-down split ``out_splits``; the number of images of each split."""
    data_config = {**DEFAULTS["data"], **data_config}
    return PREPARERS[data_config["format"]](data_config, seed, out_data, out_splits, model_name)


def open_data(path: str, workers: int = 0, pin: bool = False) -> PreparedData:
    """The prepared data at ``path``: files read by ``workers`` DataLoader processes into pinned batches when
    ``pin`` (``files.pin_batches``; files format), or tensors."""
    return FileData.open(path, workers, pin) if str(path).endswith(".parquet") else TensorData(path)
