"""What every model job works with: the resolved config, the prepared data and the device, picked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from soupflow.core.evaluate import Evaluator
from soupflow.core.models import model_for, pick_device
from soupflow.store.datasets import open_data
from soupflow.store.prepared import PreparedData


@dataclass(frozen=True)
class JobContext:
    """The config, the prepared data and the device of one job; evaluators and models for that data."""

    config: dict[str, Any]
    data: PreparedData
    device: torch.device

    @classmethod
    def open(cls, config: dict[str, Any], data_path: str, threads: int = 1) -> "JobContext":
        """The job's data (files read by as many DataLoader workers as the job has threads) and device."""
        return cls(config, open_data(data_path, workers=threads), pick_device(config["evaluation"]["device"]))

    def model(self, **timm_kwargs: Any) -> torch.nn.Module:
        """The configured timm model for this data (its classes and channels)."""
        return model_for(self.data, self.config["model"], **timm_kwargs)

    def evaluator(self, split: str, data: PreparedData | None = None,
                  model: torch.nn.Module | None = None) -> Evaluator:
        """An evaluator of one split of this job's data (or of ``data``, e.g. the corrupted copy), on a model of
        its own unless ``model`` is given, with the configured evaluation batch size."""
        return Evaluator(model if model is not None else self.model(), data or self.data, split, self.device,
                         self.config["evaluation"]["batch_size"])
