"""Glue between a Snakemake ``script:`` job and soupflow's functions."""

from __future__ import annotations

import logging
from typing import Any

from soupflow.config import merge_defaults
from soupflow.io import remove_orphan_temps
from soupflow.jobs import setup_logging


def start(snakemake: Any, resumable: bool = False) -> dict[str, Any]:
    """Set up logging to the job's log file and return the experiment config with defaults filled in.

    ``resumable`` jobs (training) append to their log: a rerun after a kill keeps what was logged before.
    Settings read here (evaluation batch size, device) are deliberately not rule params: changing them
    must not retrain finished runs.
    """
    setup_logging(snakemake.log[0] if snakemake.log else None, append=resumable)
    for path in snakemake.output:
        for orphan in remove_orphan_temps(path):
            logging.getLogger("soupflow").info("removed %s, left by a killed write", orphan)
    return merge_defaults(snakemake.config)
