"""What every job reads of a prepared data set, whatever its format, and the seeded split they share.

Splits (all disjoint):
- ``pretrain``: trains the shared init (``model.init = pretrain``);
- ``train``: fine-tunes every run;
- ``val``: ranks and selects soup ingredients, nothing else;
- ``test``: the official test split (plus ``data.test_fraction`` of the official training images, for
  narrower intervals), only for reporting. Selection never sees it. One folder of class folders (an
  image_folder without ``train/`` and ``test/``) has no official test split: ``data.test_fraction`` of its
  images, drawn image by image (``drawn_split``), are the test split.

Two formats (``data.format``) implement ``PreparedData``: ``tensors`` (``soupflow.store.data``: every image
decoded once into uint8 tensors held in memory) and ``files`` (``soupflow.store.files``: a list of image files
streamed through DataLoader workers). Both hand out uint8 NCHW batches in a given order of a split; a job
normalises them on its device with ``normalise``, the same arithmetic for both.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch

from soupflow.plan.one_folder import hashed_parts

SPLITS = ("pretrain", "train", "val", "test")


class DataError(RuntimeError):
    """The data set cannot be read; the message says where the files should be or which file is wrong."""


def split_indices(n: int, pretrain_fraction: float, val_fraction: float, seed: int,
                  test_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """Deterministic disjoint split of the official training set into pretrain / val / test_extra / train.

    ``test_extra`` (``test_fraction`` of the images) joins the official test split: a larger test split
    narrows every paired interval (the half-width shrinks as one over the square root of its size). It is
    cut after val, so a config without it splits exactly as before."""
    order = np.random.default_rng(seed).permutation(n)
    n_pretrain, n_val = int(round(n * pretrain_fraction)), max(1, int(round(n * val_fraction)))
    n_test = int(round(n * test_fraction))
    cuts = np.cumsum([n_pretrain, n_val, n_test])
    return {
        "pretrain": np.sort(order[:cuts[0]]),
        "val": np.sort(order[cuts[0]:cuts[1]]),
        "test_extra": np.sort(order[cuts[1]:cuts[2]]),
        "train": np.sort(order[cuts[2]:]),
    }


def drawn_split(data_config: dict[str, Any], seed: int, n: int, paths: list[str] | None = None
                ) -> dict[str, np.ndarray]:
    """``split_indices``'s parts of the ``n`` kept training images; with their ``paths`` (one folder of class
    folders, no official test split), each image's part drawn by a seeded hash of its path instead
    (``soupflow.plan.one_folder``): adding images moves no other image, and ``test_extra`` is the test split."""
    if paths is None:
        return split_indices(n, data_config["pretrain_fraction"], data_config["val_fraction"], seed,
                             data_config["test_fraction"])
    return {part: np.asarray(rows, dtype=np.int64) for part, rows in hashed_parts(paths, data_config, seed).items()}


def class_split(train_y: np.ndarray, data_config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Few-label transfer to new classes (``data.finetune_classes``): the same parts as ``split_indices``, cut by
    class. ``pretrain``: every image of the pretraining classes. Per fine-tuning class, in a seeded order:
    ``val`` its first ``val_fraction``, ``train`` the next ``labels_per_class`` (all the rest when null), and
    ``test_extra`` what is left, which joins that class's official test images (the target test split)."""
    rng = np.random.default_rng(seed)
    labelled = data_config["labels_per_class"]
    parts: dict[str, list[np.ndarray]] = {"pretrain": [], "val": [], "test_extra": [], "train": []}
    parts["pretrain"].append(np.flatnonzero(np.isin(train_y, data_config["pretrain_classes"] or [])))
    for label in data_config["finetune_classes"]:
        order = rng.permutation(np.flatnonzero(train_y == label))
        n_val = max(1, int(round(len(order) * data_config["val_fraction"])))
        end = len(order) if labelled is None else n_val + labelled
        if end > len(order):
            raise DataError(f"class {label} has {len(order)} training images: too few for data.labels_per_class "
                            f"{labelled} after data.val_fraction's {n_val}")
        parts["val"].append(order[:n_val])
        parts["train"].append(order[n_val:end])
        parts["test_extra"].append(order[end:])
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}


def relabelled(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """Labels of the listed classes as their positions in ``classes`` (0..n-1): what the heads predict."""
    lookup = np.full(max([int(labels.max()), *classes]) + 1, -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    return lookup[labels]  # -1 for the other classes, which no split of them holds


def subsample(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` items (``data.max_train`` / ``max_test``), seeded, in order."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def run_share(n: int, fraction: float | None, seed: int) -> torch.Tensor | None:
    """The indices of a run's own share of the ``n`` fine-tuning images (hyperparameter ``data_fraction``),
    drawn with its seed, so runs with different seeds see different images; None for all of them."""
    if fraction is None or fraction >= 1:
        return None
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max(1, round(n * fraction))]
    return keep.sort().values


def per_channel(values: list[float], channels: int, key: str) -> list[float]:
    """Constants for ``channels`` channels: one value repeats; 3 RGB values average for grey images (the
    adapted 1-channel stem sums the RGB filters, i.e. sees the grey image in all three channels)."""
    if len(values) == channels:
        return [float(v) for v in values]
    if len(values) == 1:
        return [float(values[0])] * channels
    if channels == 1:
        return [float(np.mean(values))]
    raise DataError(f"config key '{key}' has {len(values)} values for {channels}-channel images; allowed: 1 or {channels}")


def normalisation(data_config: dict[str, Any], channels: int, model_name: str | None,
                  sample: Callable[[], torch.Tensor]) -> dict[str, list[float]]:
    """Per-channel mean/std the model's inputs are normalised with (``data.normalize``).

    dataset: the statistics of ``sample()`` (uint8 NCHW pretrain + train images); pretrained: the model's timm
    ``pretrained_cfg`` (what its weights were trained with); {mean, std}: given, e.g. with a checkpoint from
    elsewhere.
    """
    choice = data_config["normalize"]
    if choice == "dataset":
        fit = sample().float() / 255.0
        return {"mean": fit.mean(dim=(0, 2, 3)).tolist(), "std": fit.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()}
    if choice == "pretrained":
        from timm.models import get_pretrained_cfg  # 2.6 s to import timm: only for normalize: pretrained

        cfg = get_pretrained_cfg(model_name)
        if cfg is None or not cfg.mean:
            raise DataError(f"config key 'data.normalize' is 'pretrained' but timm has no pretrained_cfg mean/std for "
                            f"model.name {model_name!r}; allowed: dataset or {{mean: [...], std: [...]}}")
        choice = {"mean": list(cfg.mean), "std": list(cfg.std)}
    return {name: per_channel(choice[name], channels, f"data.normalize.{name}") for name in ("mean", "std")}


def test_rows(splits: dict[str, Any]) -> list[tuple[str, int]]:
    """Which image each row of the test split is, from ``prepare``'s written-down split: (official split,
    index), the official test images first, then ``test_extra`` (``data.test_fraction``), as ``prepare``
    stacks them."""
    return [("test", i) for i in splits["test"]] + [("train", i) for i in splits.get("test_extra", [])]


def written_split(parts: dict[str, np.ndarray], kept_train: np.ndarray, kept_test: np.ndarray,
                  one_folder: bool = False) -> dict[str, Any]:
    """The split as ``splits.json`` records it: indices into the official train and test splits (one folder of
    class folders: into its one listing, which stands for the train split; its test split is test_extra)."""
    record = {split: kept_train[index].tolist() for split, index in parts.items()}
    record["test"] = kept_test.tolist()
    record["description"] = ("indices into the official train split (pretrain/train/val, and test_extra: test images "
                             "after the official ones) and into the official test split (test)")
    if one_folder:
        record["description"] = ("indices into data.root's images (class folders sorted, then paths sorted): "
                                 "pretrain/train/val, and test_extra, the test split; each image's split drawn by a "
                                 "seeded hash of its path (soupflow.plan.one_folder), so adding images moves no other")
    return record


Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class PreparedData:
    """The prepared data of one experiment: classes, the normalisation constants, each split's labels, and its
    images as uint8 NCHW batches in any order of the split (a format's own class reads them)."""

    def __init__(self, path: str, classes: list[str], mean: list[float], std: list[float]):
        self.path, self.classes = str(path), classes
        self.skipped = 0  # images that could not be read and were passed over (files, data.skip_corrupt)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image the batches hold."""
        raise NotImplementedError

    def labels(self, split: str) -> torch.Tensor:
        """int64 labels of a split, on the CPU."""
        raise NotImplementedError

    def images(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images of a split at ``indices`` (as they are evaluated), on the CPU."""
        raise NotImplementedError

    def batches(self, split: str, order: torch.Tensor | None, batch_size: int, device: torch.device) -> Batches:
        """(uint8 images, labels) of the split's images in ``order`` (all, in their order, for None), in batches
        of ``batch_size``, on ``device``: a pass that stops early reads no more than it used."""
        raise NotImplementedError

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW batch -> normalised float batch (done per batch, on the batch's device)."""
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float().div_(255.0) - mean) / std
