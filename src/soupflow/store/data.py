"""``data.format: tensors``: a data set decoded once into uint8 tensors, split, cached in one safetensors file.

Jobs hold a split in memory (on their device) and slice batches from it: no per-sample decoding in any hot
loop. The fast path for MNIST-scale data; ``soupflow.store.files`` streams image files instead.
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

from soupflow.store.files import official_splits
from soupflow.store.io import atomic_save_safetensors, atomic_write_text, open_safetensors
from soupflow.store.prepared import (
    SPLITS,
    Batches,
    DataError,
    PreparedData,
    class_split,
    drawn_split,
    normalisation,
    relabelled,
    subsample,
    written_split,
)


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
    """An image folder with ``train/`` and ``test/`` subfolders, each ``<class>/<image>``, or one folder of class
    folders (listed as the files format lists it: ``official_splits``), decoded and resized once here; the
    rest of the workflow reads the cached tensors. One folder: all of it as train, an empty test, and
    ``paths`` (each image's path in ``root``, which ``drawn_split`` draws its split from)."""
    size = image_size or 64
    train, test, one_folder = official_splits(root, "image_folder")
    out: dict[str, Any] = {"classes": train.classes, "paths": train.rows["path"] if one_folder else None}
    for split, listing in (("train", train), ("test", test)):
        images = decode_images(root, listing.rows["path"], (3, size, size))
        out[split] = (images, np.asarray(listing.rows["label"], dtype=np.int64))
    return out


def decode_images(root: str, paths: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    """The images at ``paths`` (under ``root``) as uint8 NCHW at ``shape``: grey or RGB, resized (bilinear)."""
    channels, height, width = shape
    out = np.empty((len(paths), channels, height, width), dtype=np.uint8)
    for index, path in enumerate(paths):
        with Image.open(os.path.join(root, path)) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
            out[index] = np.asarray(image).reshape(height, width, channels).transpose(2, 0, 1)
    return out


#: The reader of each ``data.name`` that decodes to tensors (``soupflow.plan.catalog.DATASETS``; image_shards
#: only streams: data.format files).
LOADERS: dict[str, Any] = {
    "fashion_mnist": lambda config: load_idx_dataset(config["root"]),
    "mnist": lambda config: load_idx_dataset(config["root"]),
    "cifar10": lambda config: load_cifar("cifar10", config["root"], config["download"]),
    "cifar100": lambda config: load_cifar("cifar100", config["root"], config["download"]),
    "image_folder": lambda config: load_image_folder(config["root"], config["image_size"]),
}


def load_raw(data_config: dict[str, Any]) -> dict[str, Any]:
    """The raw splits of the configured data set, from its reader."""
    return LOADERS[data_config["name"]](data_config)


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


def prepare_tensors(data_config: dict[str, Any], seed: int, out_tensors: str, out_splits: str,
                    model_name: str | None = None) -> dict[str, int]:
    """Decode the data set once, resize it (``data.image_size``), split it and write the tensors and the
    written-down split.

    ``out_tensors``: safetensors with ``{split}_x`` (uint8 NCHW) and ``{split}_y`` (int64), plus metadata
    (classes, the per-channel mean/std inputs are normalised with, see ``normalisation``; ``model_name``
    is only read for ``data.normalize: pretrained``). ``out_splits``: JSON with each split's indices into
    the official splits, so a split can be audited or reproduced elsewhere.
    """
    raw = load_raw(data_config)
    kept_train = subsample(len(raw["train"][1]), data_config["max_train"], seed)
    kept_test = subsample(len(raw["test"][1]), data_config["max_test"], seed + 1)
    (train_x, train_y), (test_x, test_y) = ((x[kept], y[kept]) for (x, y), kept in
                                            ((raw["train"], kept_train), (raw["test"], kept_test)))
    train_x, test_x = resize(train_x, data_config["image_size"]), resize(test_x, data_config["image_size"])
    transfer = data_config["finetune_classes"]
    paths = raw.get("paths")  # one folder of class folders: each kept image's path draws its split
    if transfer is None:
        parts = drawn_split(data_config, seed, len(train_y), None if paths is None else [paths[i] for i in kept_train])
        labels = {split: train_y for split in ("pretrain", "train", "val", "test_extra")} | {"test": test_y}
    else:  # few-label transfer: the fine-tuning classes' test images only, every head's labels 0..n-1
        parts = class_split(train_y, data_config, seed)
        targets = np.isin(test_y, transfer)
        kept_test, test_x, test_y = kept_test[targets], test_x[targets], test_y[targets]
        labels = {split: relabelled(train_y, transfer) for split in ("train", "val", "test_extra")}
        labels |= {"pretrain": relabelled(train_y, data_config["pretrain_classes"] or []),
                   "test": relabelled(test_y, transfer)}
    extra = parts["test_extra"]
    tensors = {"test_x": torch.from_numpy(np.concatenate([test_x, train_x[extra]])),
               "test_y": torch.from_numpy(np.concatenate([labels["test"], labels["test_extra"][extra]]))}
    for split in ("pretrain", "train", "val"):
        tensors[f"{split}_x"] = torch.from_numpy(np.ascontiguousarray(train_x[parts[split]]))
        tensors[f"{split}_y"] = torch.from_numpy(np.ascontiguousarray(labels[split][parts[split]]))
    norm = normalisation(data_config, train_x.shape[1], model_name,
                         lambda: torch.cat([tensors["pretrain_x"], tensors["train_x"]]))
    classes = raw["classes"] if transfer is None else [raw["classes"][c] for c in transfer]
    if transfer is not None:  # the pretraining's own classes: the init's pretraining head has as many outputs
        norm["pretrain_classes"] = [raw["classes"][c] for c in data_config["pretrain_classes"] or []]
    metadata = {"classes": json.dumps(classes), "mean": json.dumps(norm["mean"]),
                "std": json.dumps(norm["std"]), "normalize": json.dumps(data_config["normalize"]),
                "name": data_config["name"], "pretrain_classes": json.dumps(norm.get("pretrain_classes"))}
    atomic_save_safetensors(tensors, out_tensors, metadata)
    split = written_split(parts, kept_train, kept_test, paths is not None)
    if transfer is not None:
        split |= {"pretrain_classes": data_config["pretrain_classes"], "finetune_classes": transfer}
    atomic_write_text(json.dumps(split), out_splits)
    return {split: int(tensors[f"{split}_y"].numel()) for split in SPLITS}


class TensorData(PreparedData):
    """The prepared tensors of one experiment; a split is loaded once per device, when first used."""

    def __init__(self, path: str | os.PathLike):
        with open_safetensors(path) as handle:
            meta = handle.metadata()
        super().__init__(str(path), json.loads(meta["classes"]), json.loads(meta["mean"]), json.loads(meta["std"]))
        #: few-label transfer: the pretraining classes' names (its head's size); None when the classes are shared
        self.pretrain_classes = json.loads(meta.get("pretrain_classes", "null"))
        self._loaded: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def in_memory(cls, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], classes: list[str],
                  mean: list[float], std: list[float]) -> "TensorData":
        """Splits given as (uint8 NCHW images, labels) rather than read from a file (tests, benchmarks)."""
        data = cls.__new__(cls)
        PreparedData.__init__(data, "", classes, mean, std)
        data._loaded = {(name, "cpu"): pair for name, pair in splits.items()}
        return data

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image, read from the file's header (no tensor loaded)."""
        if not self.path:
            return tuple(next(iter(self._loaded.values()))[0].shape[1:])
        with open_safetensors(self.path) as handle:  # the corrupted test copy holds corrupted_x, no test_x
            name = "test_x" if "test_x" in handle.keys() else next(k for k in handle.keys() if k.endswith("_x"))
            return tuple(handle.get_slice(name).get_shape()[1:])

    def split(self, name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and int64 labels of one split, on ``device`` (read once per device)."""
        key = (name, str(device))
        if key not in self._loaded:
            if (name, "cpu") in self._loaded:
                images, labels = self._loaded[name, "cpu"]
            else:
                with open_safetensors(self.path) as handle:
                    images, labels = handle.get_tensor(f"{name}_x"), handle.get_tensor(f"{name}_y")
            self._loaded[key] = images.to(device), labels.to(device)
        return self._loaded[key]

    def labels(self, split: str) -> torch.Tensor:
        if not self.path or (split, "cpu") in self._loaded:
            return self.split(split)[1]
        with open_safetensors(self.path) as handle:
            return handle.get_tensor(f"{split}_y")

    def images(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        return self.split(split)[0][indices]

    def batches(self, split: str, order: torch.Tensor | None, batch_size: int, device: torch.device) -> Batches:
        images, labels = self.split(split, device)
        if order is not None:
            order = order.to(device)
        for start in range(0, labels.shape[0] if order is None else order.shape[0], batch_size):
            rows = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
            yield images[rows], labels[rows]
