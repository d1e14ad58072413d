"""What the benchmark's sections share: where the data is, and a prepared copy of it."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FASHION = "/usr/share/datasets/fashion-mnist"


def prepared_data(folder: Path, max_train: int | None = None) -> Path:
    from soupflow.plan.config import DEFAULTS
    from soupflow.plan.layout import data_files
    from soupflow.store.datasets import prepare

    files = data_files(str(folder))
    if not Path(files["data"]).exists():
        prepare({**DEFAULTS["data"], "root": FASHION, "max_train": max_train, "max_test": 1000}, 0,
                files["data"], files["splits"])
    return Path(files["data"])
