"""What every model job works with: the resolved config, the prepared data and the device, picked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from soupflow.core import batchnorm
from soupflow.core.evaluate import Evaluator, scoring_batch_size
from soupflow.core.models import model_for, pick_device
from soupflow.store.datasets import open_data
from soupflow.store.files import pin_batches
from soupflow.store.prepared import PreparedData


def loader_workers(config: dict[str, Any], threads: int, training: bool = False) -> int:
    """DataLoader workers of a job that reads image files: ``training.workers`` for a training job (the
    pretraining, a fine-tune) when set, else the job's threads. Its compute threads stay the job's threads."""
    workers = config["training"]["workers"] if training else None
    return threads if workers is None else int(workers)


@dataclass(frozen=True)
class JobContext:
    """The config, the prepared data and the device of one job; evaluators and models for that data."""

    config: dict[str, Any]
    data: PreparedData
    device: torch.device

    @classmethod
    def open(cls, config: dict[str, Any], data_path: str, threads: int = 1, training: bool = False) -> "JobContext":
        """The job's device, then its data: image files read by ``loader_workers`` DataLoader processes, their
        batches pinned for the copy to a CUDA device. The device comes first so that the loader's pinning
        thread works on the job's own GPU (the current one), not on GPU 0 of a machine with several."""
        device = pick_device(config["evaluation"]["device"])
        data = open_data(data_path, workers=loader_workers(config, threads, training), pin=pin_batches(device))
        return cls(config, data, device)

    def model(self, **timm_kwargs: Any) -> torch.nn.Module:
        """The configured timm model for this data (its classes and channels)."""
        return model_for(self.data, self.config["model"], **timm_kwargs)

    def scoring_batch_size(self, data: PreparedData | None = None) -> int:
        """Images per scoring batch of ``data`` (this job's by default): ``evaluation.batch_size``, or sized
        from its images and ``evaluation.memory_mb`` (auto)."""
        return scoring_batch_size(self.config["evaluation"], (data or self.data).image_shape)

    def bn_batch_size(self) -> int:
        """Images per batch of BatchNorm re-estimation on this job's data (``core.batchnorm.batch_size``)."""
        return batchnorm.batch_size(self.config["evaluation"], self.data.image_shape)

    def evaluator(self, split: str, data: PreparedData | None = None,
                  model: torch.nn.Module | None = None) -> Evaluator:
        """An evaluator of one split of this job's data (or of ``data``, e.g. the corrupted copy), on a model of
        its own unless ``model`` is given, in scoring batches of ``scoring_batch_size``."""
        return Evaluator(model if model is not None else self.model(), data or self.data, split, self.device,
                         self.scoring_batch_size(data))
