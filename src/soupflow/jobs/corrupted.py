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
from soupflow.store.data import PreparedData
from soupflow.store.io import atomic_save_safetensors, open_safetensors

log = logging.getLogger("soupflow")


def make_corrupted(spec: dict[str, Any], data_path: str, out_path: str) -> None:
    """A seeded corrupted copy of the test split, readable by :class:`PreparedData` as split 'corrupted'
    (``spec``: the config's ``analysis.corruptions``)."""
    images, labels = PreparedData(data_path).split("test")
    tensors = corrupt_split(images, labels, spec["types"], spec["severities"], spec["max_images"], spec["seed"])
    with open_safetensors(data_path) as handle:
        meta = dict(handle.metadata())
    meta["corruption_types"] = json.dumps(spec["types"])
    atomic_save_safetensors(tensors, out_path, metadata=meta)
    log.info("corrupted test copy: %d images, %s at severities %s", tensors["corrupted_y"].numel(),
             ", ".join(spec["types"]), spec["severities"])


def corrupted_outputs(config: dict[str, Any], data_path: str, model_path: str, corrupted_path: str, out_path: str,
                      threads: int = 1) -> None:
    """One run's logits on the corrupted split, computed once for every pair it is in."""
    set_threads(threads)
    context = JobContext.open(config, data_path)
    evaluator = context.evaluator(CORRUPTED_SPLIT, data=PreparedData(corrupted_path))
    logits = evaluator.logits(load_checkpoint(model_path, context.device))
    atomic_save_safetensors({"logits": logits}, out_path)
