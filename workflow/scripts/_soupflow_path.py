"""Make ``src/soupflow`` importable in script jobs even when the project is not pip-installed
(e.g. in a bare ``--sdm conda`` environment). Snakemake puts this folder on sys.path."""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
if sys.path[0] != SRC:  # first, also when Snakemake's search paths appended it behind an installed soupflow
    if SRC in sys.path:
        sys.path.remove(SRC)
    sys.path.insert(0, SRC)
