"""Make ``src/soupflow`` importable in script jobs even when the project is not pip-installed
(e.g. in a bare ``--sdm conda`` environment). Snakemake puts this folder on sys.path."""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
