"""Glue between a Snakemake ``script:`` job and soupflow's functions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from soupflow.config import check_model_name, merge_defaults
from soupflow.io import remove_orphan_temps
from soupflow.jobs import history_of, setup_logging


def start(snakemake: Any, resumable: bool = False) -> dict[str, Any]:
    """Set up logging to the job's log file and return the experiment config with defaults filled in.

    ``resumable`` jobs (training) keep a copy of their log beside their training state, so that a rerun
    after a kill starts its log with what was logged before.
    Settings read here (evaluation batch size, device) are deliberately not rule params: changing them
    must not retrain finished runs.
    """
    history = history_of(Path(snakemake.output[0]).parent / "resume.pt") if resumable else None
    setup_logging(snakemake.log[0] if snakemake.log else None, history)
    for path in snakemake.output:
        for orphan in remove_orphan_temps(path):
            logging.getLogger("soupflow").info("removed %s, left by a killed write", orphan)
    config = merge_defaults(snakemake.config)
    check_model_name(config["model"])  # done at parse time too, unless Snakemake runs without timm
    return config
