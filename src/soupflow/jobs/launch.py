"""A training job on ``training.devices_per_run`` processes, started as torchrun starts them.

The job's own process (Snakemake's script) writes what the job must do (a ``Launch``: the job's function and
its typed arguments, pickled) to a file beside its outputs and runs
``python -m torch.distributed.run --standalone --nproc-per-node N -m soupflow.jobs.launch FILE``: N processes
that join one process group (NCCL on CUDA, gloo on CPU) and call that function, process 0 writing every file.
This module knows no job by name: the function travels in the record (no import cycle with its callers). The job's process waits, hands a stop request (SIGTERM, SIGUSR1: SLURM's time limit and pre-emption)
on to torchrun, which hands it to the N processes, and fails when they fail: a rerun resumes the state that
process 0 saved. On a machine with more GPUs than the job takes, the job claims N of its own first.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from soupflow.core.distributed import join, leave
from soupflow.core.resume import Preempted
from soupflow.plan.gpus import claim_gpus, visible_gpus

log = logging.getLogger("soupflow")

SRC = str(Path(__file__).resolve().parents[2])


def devices_per_run(config: dict[str, Any]) -> int:
    return int(config["training"]["devices_per_run"])


@dataclass(frozen=True)
class Launch:
    """One job for N processes: each calls ``function(config, *arguments, threads)`` with its share of the
    threads; ``logs`` are the job's log files, which process 0 appends to."""

    function: Callable[..., Any]  # a module-level function: pickled by its name
    config: dict[str, Any]
    arguments: tuple[Any, ...]  # the function's typed records after the config (a RunSpec, RunPaths, …)
    threads: int
    logs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.function.__name__


def launch(request: Launch, folder: str | Path) -> None:
    """Run ``request`` on the config's devices_per_run processes; raise when they fail (``Preempted`` when a
    stop request stopped them after saving their state)."""
    devices = devices_per_run(request.config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".launch.pickle"
    logs = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    path.write_bytes(pickle.dumps(replace(request, logs=logs)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(max(1, request.threads // devices))}
    gpus = visible_gpus()
    if gpus and request.config["evaluation"]["device"] != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, claim_gpus(gpus, devices)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc-per-node", str(devices), "-m", "soupflow.jobs.launch", str(path)]
    log.info("%s on %d processes (torch.distributed, %s)", request.name, devices, "NCCL" if gpus else "gloo")
    process = subprocess.Popen(command, env=env)
    forwarded: list[str] = []

    def forward(number: int, _frame: Any) -> None:
        forwarded.append(signal.Signals(number).name)
        process.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        code = process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        path.unlink(missing_ok=True)
    if forwarded:
        raise Preempted(f"{request.name}: stopped by {forwarded[0]} on {devices} processes; rerun to resume")
    if code:
        raise RuntimeError(f"{request.name} on {devices} processes failed (exit {code}); see the log above")


def _run(request: Launch) -> None:
    """In each of the N processes: join the group and call the job's function, which knows its rank."""
    place = join()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if place.main:  # the job's log (and the copy a resumable job keeps), where the job's process left them
        handlers += [logging.FileHandler(path, mode="a") for path in request.logs]
    logging.basicConfig(level=logging.INFO if place.main else logging.WARNING, handlers=handlers, force=True,
                        format=f"%(asctime)s [process {place.rank}] %(message)s", datefmt="%H:%M:%S")
    try:
        request.function(request.config, *request.arguments, max(1, request.threads // place.size))
    finally:
        leave()  # each process when its part is done: process 0 after writing, the others after training


def _exit_done() -> None:
    """Leave a finished process without running C++ static destructors: one of torch's threads, still
    joinable at interpreter exit, aborts it (SIGABRT, "terminate called without an active exception") about
    one exit in twenty on CPU, and torchrun then fails a job whose files are written. Logs are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _run(pickle.loads(Path(sys.argv[1]).read_bytes()))
    _exit_done()
