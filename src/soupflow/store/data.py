"""Data sets: decoded once into uint8 tensors, split deterministically, cached in one safetensors file.

Splits (all disjoint):
- ``pretrain``: trains the shared init (``model.init = pretrain``);
- ``train``: fine-tunes every run;
- ``val``: ranks and selects soup ingredients, nothing else;
- ``test``: the official test split (plus ``data.test_fraction`` of the official training images, for
  narrower intervals), only for reporting. Selection never sees it.
Training and evaluation slice these tensors in memory: no per-sample decoding in any hot loop.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from soupflow.store.io import atomic_save_safetensors, atomic_write_text, open_safetensors

SPLITS = ("pretrain", "train", "val", "test")


class DataError(RuntimeError):
    """The data set cannot be read; the message says where the files should be."""


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    with _open_maybe_gz(path) as handle:
        raw = handle.read()
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DataError(f"missing {stem}[.gz] in {root}; put the IDX files of the data set there (data.root)")


def load_idx_dataset(root: str) -> dict[str, Any]:
    """MNIST-format data set (Fashion-MNIST, MNIST) from ``root``: NCHW uint8 images and labels."""
    base = Path(root)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(base, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(base, f"{prefix}-labels-idx1-ubyte"))
        arrays[split] = (images[:, None, :, :], labels.astype(np.int64))
    return {"train": arrays["train"], "test": arrays["test"], "classes": [str(i) for i in range(10)]}


def load_cifar(name: str, root: str, download: bool) -> dict[str, Any]:
    """CIFAR-10/100 through torchvision; downloads only when ``data.download`` is true."""
    from torchvision import datasets  # 2.0 s to import (measured after torch): only for CIFAR

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train, test = (cls(root, train=flag, download=download) for flag in (True, False))
    except RuntimeError as error:
        raise DataError(
            f"{name} not found in {root!r} ({error}). Put the extracted 'cifar-*-python' folder there, "
            "or set data.download: true on a machine with network access"
        ) from None
    except OSError as error:  # no network while downloading
        raise DataError(
            f"could not download {name} ({error}); without network, put the extracted 'cifar-*-python' folder in {root!r}"
        ) from None
    to_nchw = lambda d: np.ascontiguousarray(d.data.transpose(0, 3, 1, 2))  # noqa: E731
    return {
        "train": (to_nchw(train), np.asarray(train.targets, dtype=np.int64)),
        "test": (to_nchw(test), np.asarray(test.targets, dtype=np.int64)),
        "classes": list(train.classes),
    }


def load_image_folder(root: str, image_size: int | None) -> dict[str, Any]:
    """An ImageFolder tree with ``train/`` and ``test/`` subfolders, each ``<class>/<image>``.

    Decoded and resized once here; the rest of the workflow reads the cached tensors.
    """
    from torchvision.datasets import ImageFolder  # 2.0 s to import: only for image folders

    base = Path(root)
    for sub in ("train", "test"):
        if not (base / sub).is_dir():
            raise DataError(f"image_folder data needs {base / sub}/<class>/<image> (data.root = {root!r})")
    out: dict[str, Any] = {}
    for sub in ("train", "test"):
        folder = ImageFolder(str(base / sub))
        size = image_size or 64
        images = np.empty((len(folder.samples), 3, size, size), dtype=np.uint8)
        for i, (path, _) in enumerate(folder.samples):
            with Image.open(path) as image:
                image = image.convert("RGB").resize((size, size), Image.BILINEAR)
                images[i] = np.asarray(image).transpose(2, 0, 1)
        out[sub] = (images, np.asarray(folder.targets, dtype=np.int64))
        out["classes"] = folder.classes
    return out


#: The reader of each ``data.name`` (the names are ``config.READERS``'s; tests/test_data.py checks they agree).
LOADERS: dict[str, Any] = {
    "fashion_mnist": lambda config: load_idx_dataset(config.get("root")),
    "mnist": lambda config: load_idx_dataset(config.get("root")),
    "cifar10": lambda config: load_cifar("cifar10", config.get("root"), config.get("download", False)),
    "cifar100": lambda config: load_cifar("cifar100", config.get("root"), config.get("download", False)),
    "image_folder": lambda config: load_image_folder(config.get("root"), config.get("image_size")),
}


def load_raw(data_config: dict[str, Any]) -> dict[str, Any]:
    """The raw splits of the configured data set, from its reader."""
    return LOADERS[data_config["name"]](data_config)


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


def _subsample(images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int):
    if limit is None or limit >= len(labels):
        return images, labels, np.arange(len(labels))
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit])
    return images[keep], labels[keep], keep


def subset(images: torch.Tensor, labels: torch.Tensor, fraction: float | None, seed: int):
    """``fraction`` of the images (all of them for None), drawn with ``seed``: a run's own share of the
    fine-tuning set (hyperparameter ``data_fraction``), so runs with different seeds see different images."""
    if fraction is None or fraction >= 1:
        return images, labels
    n = labels.shape[0]
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max(1, round(n * fraction))]
    keep = keep.sort().values
    return images[keep], labels[keep]


def resize(images: np.ndarray, size: int | None, chunk: int = 4096) -> np.ndarray:
    """uint8 NCHW images resized to ``size`` x ``size`` (bilinear, antialiased, rounded), chunk by chunk;
    unchanged when ``size`` is None or already theirs."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    out = np.empty((*images.shape[:2], size, size), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        part = torch.from_numpy(images[start:start + chunk]).float()
        part = torch.nn.functional.interpolate(part, size=(size, size), mode="bilinear", antialias=True)
        out[start:start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _per_channel(values: list[float], channels: int, key: str) -> list[float]:
    """Constants for ``channels`` channels: one value repeats; 3 RGB values average for grey images (the
    adapted 1-channel stem sums the RGB filters, i.e. sees the grey image in all three channels)."""
    if len(values) == channels:
        return [float(v) for v in values]
    if len(values) == 1:
        return [float(values[0])] * channels
    if channels == 1:
        return [float(np.mean(values))]
    raise DataError(f"config key '{key}' has {len(values)} values for {channels}-channel images; allowed: 1 or {channels}")


def normalisation(data_config: dict[str, Any], images: torch.Tensor, model_name: str | None) -> dict[str, list[float]]:
    """Per-channel mean/std the model's inputs are normalised with (``data.normalize``).

    dataset: the statistics of the pretrain + train images; pretrained: the model's timm ``pretrained_cfg``
    (what its weights were trained with); {mean, std}: given, e.g. with a checkpoint from elsewhere.
    """
    choice = data_config.get("normalize", "dataset")
    channels = images.shape[1]
    if choice == "dataset":
        fit = images.float() / 255.0
        return {"mean": fit.mean(dim=(0, 2, 3)).tolist(), "std": fit.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()}
    if choice == "pretrained":
        from timm.models import get_pretrained_cfg  # 2.6 s to import timm: only for normalize: pretrained

        cfg = get_pretrained_cfg(model_name)
        if cfg is None or not cfg.mean:
            raise DataError(f"config key 'data.normalize' is 'pretrained' but timm has no pretrained_cfg mean/std for "
                            f"model.name {model_name!r}; allowed: dataset or {{mean: [...], std: [...]}}")
        choice = {"mean": list(cfg.mean), "std": list(cfg.std)}
    return {name: _per_channel(choice[name], channels, f"data.normalize.{name}") for name in ("mean", "std")}


def prepare(data_config: dict[str, Any], seed: int, out_tensors: str, out_splits: str,
            model_name: str | None = None) -> dict[str, int]:
    """Decode the data set once, resize it (``data.image_size``), split it and write the tensors and the
    written-down split.

    ``out_tensors``: safetensors with ``{split}_x`` (uint8 NCHW) and ``{split}_y`` (int64), plus metadata
    (classes, the per-channel mean/std inputs are normalised with, see ``normalisation``; ``model_name``
    is only read for ``data.normalize: pretrained``). ``out_splits``: JSON with each split's indices into
    the official splits, so a split can be audited or reproduced elsewhere.
    """
    raw = load_raw(data_config)
    size = data_config.get("image_size")
    train_x, train_y, kept_train = _subsample(*raw["train"], data_config.get("max_train"), seed)
    test_x, test_y, kept_test = _subsample(*raw["test"], data_config.get("max_test"), seed + 1)
    train_x, test_x = resize(train_x, size), resize(test_x, size)
    parts = split_indices(len(train_y), data_config["pretrain_fraction"], data_config["val_fraction"], seed,
                          data_config.get("test_fraction", 0.0))
    extra = parts["test_extra"]
    tensors = {"test_x": torch.from_numpy(np.concatenate([test_x, train_x[extra]])),
               "test_y": torch.from_numpy(np.concatenate([test_y, train_y[extra]]))}
    for split in ("pretrain", "train", "val"):
        tensors[f"{split}_x"] = torch.from_numpy(np.ascontiguousarray(train_x[parts[split]]))
        tensors[f"{split}_y"] = torch.from_numpy(np.ascontiguousarray(train_y[parts[split]]))
    norm = normalisation(data_config, torch.cat([tensors["pretrain_x"], tensors["train_x"]]), model_name)
    metadata = {"classes": json.dumps(raw["classes"]), "mean": json.dumps(norm["mean"]),
                "std": json.dumps(norm["std"]), "normalize": json.dumps(data_config.get("normalize", "dataset")),
                "name": data_config["name"]}
    atomic_save_safetensors(tensors, out_tensors, metadata)
    record = {split: kept_train[idx].tolist() for split, idx in parts.items()}
    record["test"] = kept_test.tolist()
    record["description"] = ("indices into the official train split (pretrain/train/val, and test_extra: test images "
                             "after the official ones) and into the official test split (test)")

    atomic_write_text(json.dumps(record), out_splits)
    return {split: int(tensors[f"{split}_y"].numel()) for split in SPLITS}


def test_rows(splits: dict[str, Any]) -> list[tuple[str, int]]:
    """Which image each row of the test split is, from ``prepare``'s written-down split: (official split,
    index), the official test images first, then ``test_extra`` (``data.test_fraction``), as ``prepare``
    stacks them."""
    return [("test", i) for i in splits["test"]] + [("train", i) for i in splits.get("test_extra", [])]


class PreparedData:
    """The prepared tensors of one experiment, with normalisation constants; loads splits lazily."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        with open_safetensors(self.path) as handle:
            meta = handle.metadata()
        self.classes = json.loads(meta["classes"])
        self.mean = torch.tensor(json.loads(meta["mean"])).view(1, -1, 1, 1)
        self.std = torch.tensor(json.loads(meta["std"])).view(1, -1, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image, read from the file's header (no tensor loaded)."""
        with open_safetensors(self.path) as handle:
            return tuple(handle.get_slice("test_x").get_shape()[1:])

    def split(self, name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and int64 labels of one split, on ``device``."""
        with open_safetensors(self.path) as handle:
            images, labels = handle.get_tensor(f"{name}_x"), handle.get_tensor(f"{name}_y")
        return images.to(device), labels.to(device)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW batch -> normalised float batch (done per batch, on the batch's device)."""
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float().div_(255.0) - mean) / std
