"""One training job on several processes (``training.devices_per_run``), with torch.distributed as torchrun
starts it: DistributedDataParallel, NCCL on CUDA, gloo on CPU.

Every process walks the same global order of the training images; each global batch of ``batch_size``
images is dealt out as ``DistributedSampler`` deals an epoch (without shuffling): process ``r`` of ``N``
takes the batch's images ``r, r + N, …``. DDP averages the processes' gradients, so a step is the step of
the whole batch, as in one process (models with BatchNorm see per-process batch statistics unless
``training.sync_bn``). Process 0 alone writes checkpoints, training states, logs and tables. A stop request
(SIGTERM) reaching any process stops all of them at the same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the job's processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes files and logs."""
        return self.rank == 0

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch (or of an epoch's order, batch-aligned): items r, r + N, …"""
        return items[self.rank::self.size] if self.size > 1 else items

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when ``flag`` is true on any (a stop request, a loss that is not finite)."""
        if self.size == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a float over the processes (each a mean over an equal share of a global batch)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.size

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def world() -> World:
    """The World of this process: from torch.distributed once it is initialised, else one process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def join() -> World:
    """Initialise torch.distributed from torchrun's environment (NCCL on CUDA, gloo on CPU)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world()


def leave() -> None:
    """Destroy this process's process group, once its last collective is behind it. A process that exits
    with the group alive may abort (SIGABRT) in gloo's teardown at interpreter exit, failing a finished job."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device, sync_bn: bool) -> torch.nn.Module:
    """``model`` (already on ``device``) as the module that trains: itself in one process, DDP in several."""
    place = world()
    if place.size == 1:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise RuntimeError("training.sync_bn needs CUDA (torch's SyncBatchNorm); on CPU train a model without "
                               "BatchNorm on several processes, or leave sync_bn off")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
