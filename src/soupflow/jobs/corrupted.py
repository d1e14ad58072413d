"""The corrupted test copy of the analysis (noise, blur, contrast, brightness, pixelation, JPEG) and each
run's logits on it, computed once per run for every pair the run is in."""

from __future__ import annotations

import json
import logging
from typing import Any

from soupflow.core.corruptions import corrupt_split
from soupflow.core.models import load_checkpoint, set_threads
from soupflow.jobs.context import JobContext
from soupflow.plan.catalog import CORRUPTED_SPLIT
from soupflow.store.data import TensorData
from soupflow.store.datasets import open_data
from soupflow.store.io import atomic_save_safetensors

log = logging.getLogger("soupflow")


def make_corrupted(spec: dict[str, Any], data_path: str, out_path: str, split: str = CORRUPTED_SPLIT) -> None:
    """A seeded corrupted copy of (a sample of) the test split, as tensors (``TensorData`` reads it as
    ``split``: 'corrupted' for the analysis, 'test' for a shift set; ``spec``: the config's
    ``analysis.corruptions``)."""
    data = open_data(data_path)
    corrupted = corrupt_split(lambda rows: data.images("test", rows), data.labels("test"), spec["types"],
                              spec["severities"], spec["max_images"], spec["seed"])
    tensors = {name.replace(CORRUPTED_SPLIT, split, 1): tensor for name, tensor in corrupted.items()}
    meta = {"classes": json.dumps(data.classes), "mean": json.dumps(data.mean.flatten().tolist()),
            "std": json.dumps(data.std.flatten().tolist()), "corruption_types": json.dumps(spec["types"])}
    atomic_save_safetensors(tensors, out_path, metadata=meta)
    log.info("corrupted test copy: %d images, %s at severities %s", tensors[f"{split}_y"].numel(),
             ", ".join(spec["types"]), spec["severities"])


def corrupted_outputs(config: dict[str, Any], data_path: str, model_path: str, corrupted_path: str, out_path: str,
                      threads: int = 1) -> None:
    """One run's logits on the corrupted split, computed once for every pair it is in."""
    set_threads(threads)
    context = JobContext.open(config, data_path, threads)
    evaluator = context.evaluator(CORRUPTED_SPLIT, data=TensorData(corrupted_path))
    logits = evaluator.logits(load_checkpoint(model_path, context.device))
    atomic_save_safetensors({"logits": logits}, out_path)
