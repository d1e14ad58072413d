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


_CLAIM = None  # the open lock file of this process's GPU, held until the process exits


def claim_gpu(count: int, lock_dir: str | None = None, poll_seconds: float = 2.0) -> int:
    """Pick a GPU no other soupflow job on this machine holds (an exclusive flock per GPU).

    Snakemake's ``--resources gpu=N`` caps how many GPU jobs run at once; this gives each of them a
    different device. Under SLURM each job sees only the GPUs it was given, so with one visible GPU
    there is nothing to claim.
    """
    global _CLAIM
    if count <= 1:
        return 0
    if _CLAIM is not None:
        return _CLAIM[1]
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
            _CLAIM = (handle, index)
            return index
        time.sleep(poll_seconds)  # more GPU jobs than GPUs: --resources gpu=N was not set


