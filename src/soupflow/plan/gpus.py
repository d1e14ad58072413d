"""GPUs without torch: how many this machine shows (read when Snakemake parses the workflow, so that
plain ``snakemake --cores N`` runs at most one GPU job per device), and which one a job takes."""

from __future__ import annotations

import fcntl
import glob
import os
import tempfile
import time


def visible_gpus(environ: dict[str, str] | None = None, device_files: str = "/dev/nvidia[0-9]*") -> int:
    """The number of GPUs a job could use: ``CUDA_VISIBLE_DEVICES`` when set (empty or -1: none), else the
    NVIDIA device files. Torch-free and instant, unlike ``torch.cuda.device_count()``."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        entries = [e.strip() for e in listed.split(",") if e.strip()]
        return 0 if not entries or entries[0] == "-1" else len(entries)
    return len(glob.glob(device_files))


_CLAIMS: list = []  # the open lock files of this process's GPUs, held until the process exits


def claim_gpus(count: int, want: int = 1, lock_dir: str | None = None, poll_seconds: float = 2.0) -> list[int]:
    """Pick ``want`` of the ``count`` visible GPUs that no other soupflow job on this machine holds (an
    exclusive flock per GPU), waiting until that many are free.

    Snakemake's ``--resources gpu=N`` caps how many GPUs the running jobs ask for together; this gives each
    job devices of its own (a job of ``training.devices_per_run`` processes takes that many). Under SLURM each
    job sees only the GPUs it was given, so when it wants all it sees there is nothing to claim.
    """
    if count <= want:
        return list(range(count))
    if _CLAIMS:
        return [index for _, index in _CLAIMS]
    folder = lock_dir or os.path.join(tempfile.gettempdir(), "soupflow-gpus")
    os.makedirs(folder, exist_ok=True)
    while True:
        for index in range(count):
            handle = open(os.path.join(folder, f"gpu{index}.lock"), "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _CLAIMS.append((handle, index))
            if len(_CLAIMS) == want:
                return [index for _, index in _CLAIMS]
        for handle, _ in _CLAIMS:  # not enough free: let go and wait, so that two jobs never deadlock
            handle.close()
        _CLAIMS.clear()
        time.sleep(poll_seconds)  # more GPU jobs than GPUs: --resources gpu=N was not set


def claim_gpu(count: int, lock_dir: str | None = None, poll_seconds: float = 2.0) -> int:
    """One GPU of ``count`` for this job (``claim_gpus``)."""
    return (claim_gpus(count, 1, lock_dir, poll_seconds) or [0])[0]
