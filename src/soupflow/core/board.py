"""TensorBoard scalars of a training job, so that ``tensorboard --logdir results/`` shows a running grid live.

Optional: written with ``torch.utils.tensorboard.SummaryWriter`` when the ``tensorboard`` package is installed
(``pip install soupflow[tensorboard]``), skipped with one info line otherwise. Only process 0 writes. The event
files go to a folder of the job's own (``soupflow.plan.layout.run_board``) that no rule declares: their absence
never reruns anything, and they are not what any result is read from.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from typing import Any

from soupflow.core.distributed import world

log = logging.getLogger("soupflow")

#: seconds between flushes to disk: what "live" means for a watching TensorBoard
FLUSH_SECONDS = 10


def _summary_writer() -> Any:
    """torch's ``SummaryWriter`` class, or None when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports tensorboard, which is optional
        return None
    return SummaryWriter


@dataclass
class Board:
    """The scalars of one training loop (a no-op without a folder, without tensorboard, or off process 0)."""

    writer: Any = None

    @classmethod
    def open(cls, folder: str | None, resumed_step: int = 0) -> "Board":
        """A board writing to ``folder``. A loop that starts afresh clears what an earlier attempt wrote there;
        a resumed one hides the earlier attempt's events from ``resumed_step`` on (``purge_step``: the steps
        it trains again), so that every step shows once."""
        if folder is None or not world().main:
            return cls()
        writer = _summary_writer()
        if writer is None:
            log.info("TensorBoard scalars are not written to %s: the tensorboard package is not installed", folder)
            return cls()
        if resumed_step == 0:
            shutil.rmtree(folder, ignore_errors=True)
        return cls(writer(folder, purge_step=resumed_step or None, flush_secs=FLUSH_SECONDS))

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """``values`` (tag → value) at ``step``; those that are None or not finite are left out."""
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def add_scalars(folder: str | None, step: int, values: dict[str, float | None]) -> None:
    """Add ``values`` at ``step`` to the board in ``folder`` after its loop finished (a job's final scores):
    another event file in the same folder, which TensorBoard reads as the same run."""
    board = Board()
    writer = _summary_writer() if folder is not None and world().main else None
    if writer is not None:
        board = Board(writer(folder, flush_secs=FLUSH_SECONDS))
    board.scalars(step, values)
    board.close()
