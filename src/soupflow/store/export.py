"""timm-native checkpoint folders: a ``config.json`` beside every ``model.safetensors``.

With it, plain timm rebuilds and loads any fine-tune, soup or the init without soupflow:
``timm.create_model("local-dir:results/soups/greedy", pretrained=True)``, and
``timm.data.resolve_data_config(model=...)`` gives the input size and the mean/std its inputs were
normalised with (of uint8 / 255). The layout is the one timm reads from the Hugging Face hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from soupflow.store.datasets import open_data
from soupflow.store.io import atomic_write_text, open_safetensors
from soupflow.store.prepared import PreparedData


def timm_config(metadata: dict[str, str], data: PreparedData) -> dict[str, Any]:
    """timm's config.json for a checkpoint written by soupflow (its metadata) on this data."""
    channels, height, width = data.image_shape
    num_classes = int(metadata["num_classes"])
    return {
        "architecture": metadata["model"],
        "num_classes": num_classes,
        "model_args": {**json.loads(metadata.get("kwargs", "{}")), "in_chans": channels},
        "pretrained_cfg": {
            "input_size": [channels, height, width],
            "mean": data.mean.flatten().tolist(),
            "std": data.std.flatten().tolist(),
            "num_classes": num_classes,
            "label_names": [str(name) for name in data.classes],
        },
    }


def write_timm_configs(models: list[str], configs: list[str], data_path: str, index: str) -> None:
    """``configs[i]`` = timm's config.json for the checkpoint ``models[i]`` (same folder); ``index`` lists
    the folders, one per line (what `local-dir:` can load)."""
    data = open_data(data_path)
    for model, config in zip(models, configs, strict=True):
        assert Path(model).parent == Path(config).parent, (model, config)
        with open_safetensors(model) as handle:
            metadata = handle.metadata()
        atomic_write_text(json.dumps(timm_config(metadata, data), indent=2), config)
    atomic_write_text("".join(f"{Path(config).parent}\n" for config in configs), index)
