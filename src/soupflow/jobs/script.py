"""Glue between a Snakemake ``script:`` job and soupflow's functions."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from soupflow.core.resume import history_of, state_beside
from soupflow.plan.timm_names import check_model_kwargs, check_model_name
from soupflow.store.io import remove_orphan_temps

log = logging.getLogger("soupflow")


def setup_logging(log_file: str | None = None, history: str | os.PathLike | None = None) -> None:
    """Progress to stderr (shown by Snakemake) and to the job's log file. Jobs that resume pass ``history``
    (see ``history_of``): what earlier, killed attempts logged comes first in the log, and is kept there."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        earlier = Path(history).read_text() if history and Path(history).exists() else ""
        Path(log_file).write_text(earlier)
        handlers.append(logging.FileHandler(log_file, mode="a"))
        if history:
            handlers.append(logging.FileHandler(history, mode="a"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)


def open_job(snakemake: Any, resumable: bool = False) -> dict[str, Any] | None:
    """Set up logging to the job's log file, remove what killed writes of its outputs left, and return the
    resolved config its rule hands it (``params.config``, ``soupflow.plan.params.untracked``; None for rules
    that need none): the config the workflow's parse resolved, the only one a job sees.

    ``resumable`` jobs (training) keep a copy of their log beside their training state, so that a rerun
    after a kill starts its log with what was logged before.
    """
    history = history_of(state_beside(snakemake.output[0])) if resumable else None
    setup_logging(snakemake.log[0] if snakemake.log else None, history)
    for path in snakemake.output:
        for orphan in remove_orphan_temps(path):
            log.info("removed %s, left by a killed write", orphan)
    if "config" not in snakemake.params.keys():
        return None
    config = snakemake.params.config.resolved
    check_model_name(config["model"])  # done at parse time too, unless Snakemake runs without timm
    check_model_kwargs(config["model"])
    return config
