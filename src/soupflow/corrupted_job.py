"""The corrupted test copy of the analysis (noise, blur, contrast, brightness, pixelation, JPEG) and each
run's logits on it, computed once per run for every pair the run is in."""

from __future__ import annotations

import json
import logging
from typing import Any

from soupflow.corruptions import corrupt_split
from soupflow.data import PreparedData
from soupflow.evaluate import Evaluator
from soupflow.io import atomic_save_safetensors, open_safetensors
from soupflow.models import load_checkpoint, model_for, pick_device, set_threads

log = logging.getLogger("soupflow")

#: The split name under which ``PreparedData`` reads the corrupted copy.
CORRUPTED = "corrupted"


def make_corrupted(config: dict[str, Any], data_path: str, out_path: str) -> None:
    """A seeded corrupted copy of the test split, readable by :class:`PreparedData` as split 'corrupted'."""
    spec = config["analysis"]["corruptions"]
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
    data, corrupted = PreparedData(data_path), PreparedData(corrupted_path)
    device = pick_device(config["evaluation"]["device"])
    evaluator = Evaluator(model_for(data, config["model"]), corrupted, CORRUPTED, device, config["evaluation"]["batch_size"])
    logits = evaluator.logits(load_checkpoint(model_path, device))
    atomic_save_safetensors({"logits": logits}, out_path)
