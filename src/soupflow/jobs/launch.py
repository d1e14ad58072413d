"""A training job on ``training.devices_per_run`` processes, started as torchrun starts them.

The job's own process (Snakemake's script) writes what the job must do to a file beside its outputs and runs
``python -m torch.distributed.run --standalone --nproc-per-node N -m soupflow.jobs.launch FILE``: N processes
that join one process group (NCCL on CUDA, gloo on CPU) and call the job's function, process 0 writing every
file. The job's process waits, hands a stop request (SIGTERM, SIGUSR1: SLURM's time limit and pre-emption)
on to torchrun, which hands it to the N processes, and fails when they fail: a rerun resumes the state that
process 0 saved. On a machine with more GPUs than the job takes, the job claims N of its own first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from soupflow.core.distributed import join, leave
from soupflow.core.resume import Preempted
from soupflow.plan.gpus import claim_gpus, visible_gpus

log = logging.getLogger("soupflow")

SRC = str(Path(__file__).resolve().parents[2])


def devices_per_run(config: dict[str, Any]) -> int:
    return int(config["training"]["devices_per_run"])


def launch(job: str, payload: dict[str, Any], folder: str | Path) -> None:
    """Run job ``job`` (``JOBS``) with ``payload`` on the config's devices_per_run processes; raise when they
    fail (``Preempted`` when a stop request stopped them after saving their state)."""
    devices = devices_per_run(payload["config"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    request = folder / ".launch.json"
    logs = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    request.write_text(json.dumps({"job": job, "logs": logs, **payload}, default=str))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(max(1, int(payload["threads"]) // devices))}
    gpus = visible_gpus()
    if gpus and payload["config"]["evaluation"]["device"] != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, claim_gpus(gpus, devices)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc-per-node", str(devices), "-m", "soupflow.jobs.launch", str(request)]
    log.info("%s on %d processes (torch.distributed, %s)", job, devices, "NCCL" if gpus else "gloo")
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
        request.unlink(missing_ok=True)
    if forwarded:
        raise Preempted(f"{job}: stopped by {forwarded[0]} on {devices} processes; rerun to resume")
    if code:
        raise RuntimeError(f"{job} on {devices} processes failed (exit {code}); see the log above")


def _run(request: dict[str, Any]) -> None:
    """In each of the N processes: join the group and call the job's function, which knows its rank."""
    place = join()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if place.main:  # the job's log (and the copy a resumable job keeps), where the job's process left them
        handlers += [logging.FileHandler(path, mode="a") for path in request["logs"]]
    logging.basicConfig(level=logging.INFO if place.main else logging.WARNING, handlers=handlers, force=True,
                        format=f"%(asctime)s [process {place.rank}] %(message)s", datefmt="%H:%M:%S")
    threads = max(1, int(request["threads"]) // place.size)
    try:
        _call(request, threads)
    finally:
        leave()  # each process when its part is done: process 0 after writing, the others after training


def _call(request: dict[str, Any], threads: int) -> None:
    from soupflow.jobs.finetune import RunPaths, RunSpec, finetune
    from soupflow.jobs.init import InitPaths, make_init

    if request["job"] == "finetune":
        finetune(request["config"], RunSpec(**request["run"]), RunPaths(**request["paths"]), threads)
    else:
        paths = request["paths"]
        make_init(request["config"], InitPaths(paths["data"], paths["model"],
                                               {int(epoch): path for epoch, path in paths["epochs"].items()}),
                  threads)


def _exit_done() -> None:
    """Leave a finished process without running C++ static destructors: one of torch's threads, still
    joinable at interpreter exit, aborts it (SIGABRT, "terminate called without an active exception") about
    one exit in twenty on CPU, and torchrun then fails a job whose files are written. Logs are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _run(json.loads(Path(sys.argv[1]).read_text()))
    _exit_done()
