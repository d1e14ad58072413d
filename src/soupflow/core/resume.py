"""Resumable training: where a loop is (``Progress``), its full state on disk, and the signals that stop it.

A training job saves model, optimiser, RNG states and its ``Progress`` atomically (at epoch ends, every
``Resume.every_steps`` steps, and on SIGTERM/SIGUSR1 — SLURM's time-limit and pre-emption warnings); a rerun
of the killed job continues from it. A saved state is used only for the exact start it was saved for
(hyperparameters, data size, model config, starting file): anything else is discarded, never resumed stale.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from soupflow.store.io import atomic_path, file_digest, remove_orphan_temps

log = logging.getLogger("soupflow")


class Preempted(RuntimeError):
    """Training stopped on SIGTERM/SIGUSR1 after saving its state; rerunning the job resumes it."""


class StopRequests:
    """Turns SIGTERM and SIGUSR1 into a flag the loop checks after every step, so the state is saved at a
    step boundary before the process exits."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.requested = signal.Signals(number).name

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass
class Resume:
    """Where the full training state is kept, and how often it is saved (0 = at epoch ends only)."""

    path: str
    every_steps: int = 0
    start: str = ""  # identity of what training starts from (checkpoint hash, model config): see load_state


@dataclass
class Progress:
    """Where a training loop is: saved with the weights, so that a resumed loop goes on from the same step
    with the same data order (``order``), running loss and wall-clock accounting (kills excluded)."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next step within the epoch
    order: torch.Tensor | None = None  # the epoch's permutation of the training images
    running: float = 0.0  # sum of the epoch's losses so far
    epoch_losses: list[float] = field(default_factory=list)
    epoch_ends: list[float] = field(default_factory=list)  # seconds since the start at each epoch's end
    epoch_scores: list[float] = field(default_factory=list)  # what ``on_epoch_end`` returned (val accuracy), or nan
    seconds: float = 0.0


def fingerprint(hp: dict[str, Any], n: int, start: str) -> str:
    """What a saved state is valid for: the hyperparameters, the number of training images, the start."""
    return json.dumps({"hp": hp, "n": n, "start": start}, sort_keys=True, default=str)


def save_state(path: str, key: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               generator: torch.Generator, progress: Progress, extra: dict[str, Any] | None = None) -> None:
    """Model, optimiser, RNG states and loop position, written atomically (a kill never truncates it);
    ``extra``: more top-level entries of the state (e.g. fp16's loss scaler), read back from ``load_state``'s dict."""
    state = {"fingerprint": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), **asdict(progress),
             **(extra or {})}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str, key: str, device: torch.device) -> dict[str, Any] | None:
    """The saved state at ``path`` if it was saved for ``key`` (see ``fingerprint``) and can be read."""
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # damaged (a disk fault, a copy cut short): start over rather than fail for good
        log.warning("discarding %s and training from the start: it cannot be read (%s: %s)", path,
                    type(error).__name__, error)
        return None
    if state.get("fingerprint") != key:
        log.warning("discarding %s and training from the start: it was saved for other hyperparameters, data, "
                    "model or starting weights (e.g. the init was retrained since)", path)
        return None
    return state


def restore(saved: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            generator: torch.Generator) -> Progress:
    """Put a loaded state back into the model, optimiser and RNGs; return where the loop was."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(saved["generator"].cpu())
    torch.set_rng_state(saved["torch_rng"].cpu())
    if "cuda_rng" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda_rng"]])
    return Progress(**{f.name: saved[f.name] for f in fields(Progress) if f.name in saved})


def preempted(name: str, stop: StopRequests, step: int, resume: Resume | None) -> Preempted:
    where = f"; state saved to {resume.path}, rerun to resume" if resume else ""
    return Preempted(f"{name}: stopped by {stop.requested} at step {step}{where}")


# ---------------------------------------------------------------- a job's training state on disk
def job_resume(config: dict[str, Any], path: Path, start_file: str) -> Resume:
    """Where a job keeps its training state; the state is valid only for this model config and this exact
    starting file (the init checkpoint of a fine-tune, the data of pretraining): a retrained init or
    re-prepared data discards it instead of resuming stale work."""

    remove_orphan_temps(path)
    start = json.dumps({"model": config["model"], "start_file_sha256": file_digest(start_file)}, sort_keys=True)
    return Resume(str(path), int(config["training"]["checkpoint_every_steps"]), start)


def history_of(resume_path: Path) -> Path:
    """The log of a resumable job's earlier attempts, kept beside its training state: Snakemake deletes the
    log of an incomplete job before rerunning it, this copy survives and is written back at the top."""
    return resume_path.with_suffix(".log")


def forget(path: Path) -> None:
    """Remove a training state (and the log history kept beside it) once the outputs it led to are in place."""
    for stale in (path, history_of(path)):
        stale.unlink(missing_ok=True)


def state_beside(output: str | Path) -> Path:
    """Where the job writing ``output`` keeps its training state: ``resume.pt`` in the output's folder
    (a training job's transient file, never an output: removed when the job's outputs are in place)."""
    return Path(output).parent / "resume.pt"
