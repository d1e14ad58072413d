"""What the rules hand their jobs, derived from the one resolved config.

Snakemake reruns a job whose ``params`` changed: it compares every param of a builtin type (strings,
numbers, lists, dicts …) with the value recorded when the job last ran, and leaves other objects out of the
comparison (``snakemake.persistence``, since 8.0). So each rule declares two kinds of params:

- **tracked** ones, plain values: what its outputs depend on (a run's hyperparameters, the model, the data
  settings). A key added to the config after results existed is left out while it is at its neutral default
  (``tracked``), so upgrading soupflow does not rerun finished jobs;
- the **resolved config** itself, wrapped by ``untracked``: how a job runs (evaluation batch size, device,
  precision, checkpoint interval), which must not retrain anything when edited. Jobs read the config from it
  and from nothing else (``soupflow.jobs.script.open_job``): the config the parse resolved, one route.
"""

from __future__ import annotations

import glob
import os
from types import SimpleNamespace
from typing import Any

from soupflow.plan import layout
from soupflow.plan.catalog import CORRUPTED_SHIFT, RECIPES, soup_options
from soupflow.plan.one_folder import class_folders, is_one_folder

#: keys added to a config section after results folders existed, at the value that changes nothing; a tracked
#: param leaves them out at that value (upgrading does not re-trigger finished jobs)
LATE_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"test_fraction": 0.0, "normalize": "dataset", "format": "tensors", "crop_pct": None,
             "interpolation": None, "skip_corrupt": False, "pretrain_classes": None, "finetune_classes": None,
             "labels_per_class": None},
    "model": {"match": "name", "init_bn": "keep", "linear_probe": False, "shared_finetune": None},
    "pretrain": {"task": "labels"},
}


#: keys of a section that rules of their own read and track (data.shift_sets: rule prepare_shift), left out of the
#: section's tracked param: adding a shift set reprepares no data and retrains nothing
TRACKED_APART: dict[str, tuple[str, ...]] = {"data": ("shift_sets",)}


def tracked(config: dict[str, Any], section: str) -> dict[str, Any]:
    """A config section as a rerun-triggering param: without keys at their neutral value (``LATE_DEFAULTS``)
    and those other rules track (``TRACKED_APART``)."""
    late, apart = LATE_DEFAULTS.get(section, {}), TRACKED_APART.get(section, ())
    return {key: value for key, value in config[section].items()
            if key not in apart and (key not in late or value != late[key])}


def untracked(config: dict[str, Any]) -> SimpleNamespace:
    """The resolved config as a param Snakemake does not compare (not a builtin type): every job gets it, and
    editing a setting no output depends on reruns nothing."""
    return SimpleNamespace(resolved=config)


def pipelines(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{folder: that pipeline's config}: one per seed of ``replicates`` (the config with that top-level seed),
    the top-level seed's first; without ``replicates``, the one pipeline in ``results/``."""
    seeds = config["replicates"] or [config["seed"]]
    ordered = [config["seed"], *(seed for seed in seeds if seed != config["seed"])]
    return {layout.pipeline_folder(seed, config["seed"]): {**config, "seed": seed} for seed in ordered}


def fetches_weights(model: dict[str, Any]) -> bool:
    """Whether the init reads timm's hub weights from the file rule pretrained_weights fetches: ``model.init:
    timm`` without ``model.file``, for a timm name (an ``hf-hub:`` name brings its own config: its init job asks
    the hub itself)."""
    return model["init"] == "timm" and not model["file"] and not model["name"].startswith(("hf-hub:", "hf_hub:"))


def kept_epochs(config: dict[str, Any]) -> list[int]:
    """Epochs of the pretraining trajectory kept as branch points (0 = before pretraining)."""
    if config["model"]["init"] != "pretrain":
        return [0]
    every, epochs = config["pretrain"]["keep_every"], config["pretrain"]["epochs"]
    return sorted({0, *range(every, epochs + 1, every)})


def soup_name(entry: dict[str, Any]) -> str:
    """A soup entry's output name: its ``name``, else its recipe."""
    return entry.get("name", entry["recipe"])


def soup_specs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Soup entries as the user wrote them, keyed by their output name (the soup rule's tracked param)."""
    return {soup_name(entry): dict(entry) for entry in config["soups"]}


def soup_base(entry: dict[str, Any]) -> str | None:
    """The soup an entry interpolates toward (wise_ft's ``base``); None for recipes that take no base."""
    return soup_options(entry)["base"] if RECIPES[entry["recipe"]].needs_base else None


def shift_streamed(source: str, data_format: str) -> bool:
    """Whether a shift set's images are listed and streamed (an image folder with ``data.format: files``) rather
    than decoded into tensors (``layout.shift_data_file``)."""
    return source != CORRUPTED_SHIFT and data_format == "files"


def shift_set_folders(source: str) -> list[str]:
    """A shift set's inputs: the class folders of its image folder (an image added changes its folder), none
    for the corrupted test split."""
    return [] if source == CORRUPTED_SHIFT else [os.path.join(source, name) for name in class_folders(source)]


def image_folders(data: dict[str, Any]) -> list[str]:
    """What prepare_data lists with ``data.format: files``, as its inputs: each class folder of an image folder
    (of train/ and test/, or of data.root itself when it holds the classes; an image added or removed changes
    its folder), or each tar shard; nothing for tensors. Only folders and
    shards are listed here, never the images: cheap at parse time however many there are."""
    if data["format"] != "files":
        return []
    if data["name"] == "image_folder" and is_one_folder(data["root"]):  # class folders straight in data.root
        return [os.path.join(data["root"], name) for name in class_folders(data["root"])]
    splits = [os.path.join(data["root"], split) for split in ("train", "test")]
    if data["name"] == "image_shards":
        return sorted(path for split in splits for path in glob.glob(os.path.join(split, "*.tar")))
    return sorted(entry.path for split in splits if os.path.isdir(split) for entry in os.scandir(split)
                  if entry.is_dir())
