"""``data.format: files``: your own images at any resolution, streamed, in memory that does not grow with them.

``prepare_data`` lists the images without decoding them (an image folder ``<split>/<class>/<image>``, or
WebDataset tar shards ``<split>/*.tar`` holding ``<key>.<jpg|png|…>`` with ``<key>.cls``) into one Parquet
table: each image's split, path (and tar member and offset), label, size and modification time (what a job
checks to notice a file changed since). Jobs read the images through ``torch.utils.data.DataLoader`` workers
and timm's transforms (``timm.data.create_transform``, the eval transform of the model's ``pretrained_cfg``
unless the config overrides it), as uint8 batches normalised on the job's device like the tensors path's.

Training transforms are seeded per image by (run seed, epoch, position in the epoch's order), not per
worker: the same batches whatever the number of workers, and a run resumed mid-epoch sees what it would
have seen.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from soupflow.plan.one_folder import IMAGE_SUFFIXES, is_one_folder
from soupflow.store.io import atomic_write_parquet, atomic_write_text
from soupflow.store.prepared import (
    Batches,
    DataError,
    PreparedData,
    drawn_split,
    normalisation,
    subsample,
    written_split,
)

log = logging.getLogger("soupflow")

LABEL_SUFFIX = ".cls"
#: images whose pixel statistics give ``data.normalize: dataset`` (a seeded sample: bounded work and memory)
STATISTICS_IMAGES = 1000
TABLE_SCHEMA = pa.schema([("split", pa.string()), ("path", pa.string()), ("member", pa.string()),
                          ("offset", pa.int64()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                          ("label", pa.int64())])


@dataclass
class Listing:
    """The images of one official split, in a fixed order (classes sorted, then paths sorted)."""

    classes: list[str]
    rows: dict[str, list] = field(default_factory=lambda: {name: [] for name in TABLE_SCHEMA.names if name != "split"})
    skipped: int = 0  # files that are not images

    def add(self, path: str, member: str | None, offset: int, size: int, mtime_ns: int, label: int) -> None:
        for name, value in zip(("path", "member", "offset", "size", "mtime_ns", "label"),
                               (path, member, offset, size, mtime_ns, label)):
            self.rows[name].append(value)

    def __len__(self) -> int:
        return len(self.rows["path"])


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _known(classes: list[str] | None, found: list[str], where: Path) -> list[str]:
    """The classes a split is labelled with: its own (train), or train's, of which it must use no other (test)."""
    if classes is None:
        return found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{where} has classes the train split lacks: {', '.join(unknown[:5])}")
    return classes


def list_folder(root: str, split: str, classes: list[str] | None = None) -> Listing:
    """``<root>/<split>/<class>/…/<image>``, in the order of torchvision's ImageFolder; other files counted.
    ``split`` "" lists ``<root>/<class>/…`` (one folder of class folders)."""
    base = Path(root) / split
    if not base.is_dir():
        raise DataError(f"image_folder data needs {base}/<class>/<image> (data.root = {root!r})")
    listing = Listing(_known(classes, _class_folders(base), base))
    index = {name: i for i, name in enumerate(listing.classes)}
    for name in _class_folders(base):
        for folder, _, names in sorted(os.walk(base / name, followlinks=True)):
            for file in sorted(names):
                path = os.path.join(folder, file)
                if not file.lower().endswith(IMAGE_SUFFIXES):
                    listing.skipped += 1
                    continue
                stat = os.stat(path)
                listing.add(os.path.relpath(path, root), None, -1, stat.st_size, stat.st_mtime_ns, index[name])
    return listing


def _shard_samples(shard: Path) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """(image member, label text) of every sample of a WebDataset shard (``key.jpg`` + ``key.cls``)."""
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        labels = {m.name.rsplit(".", 1)[0]: tar.extractfile(m).read().decode().strip()
                  for m in members if m.name.endswith(LABEL_SUFFIX)}
    for member in members:
        key = member.name.rsplit(".", 1)[0]
        if member.name.lower().endswith(IMAGE_SUFFIXES) and key in labels:
            yield member, labels[key]


def list_shards(root: str, split: str, classes: list[str] | None = None) -> Listing:
    """``<root>/<split>/*.tar`` WebDataset shards: each image member with its ``.cls`` label (a class name or
    index), read in place (member offset and size), never extracted."""
    base = Path(root) / split
    shards = sorted(base.glob("*.tar"))
    if not shards:
        raise DataError(f"image_shards data needs {base}/*.tar (WebDataset shards; data.root = {root!r})")
    samples = [(shard, member, label) for shard in shards for member, label in _shard_samples(shard)]
    found = sorted({label for _, _, label in samples}, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))
    listing = Listing(_known(classes, found, base))
    index = {name: i for i, name in enumerate(listing.classes)}
    for shard, member, label in samples:
        listing.add(os.path.relpath(shard, root), member.name, member.offset_data, member.size,
                    shard.stat().st_mtime_ns, index[label])
    return listing


LISTERS = {"image_folder": list_folder, "image_shards": list_shards}


def official_splits(root: str, name: str) -> tuple[Listing, Listing, bool]:
    """The official train and test listings of ``data.root``, and whether it is one folder of class folders
    (an image_folder without train/ and test/): then all of it stands for train, and test is empty."""
    if name == "image_folder" and is_one_folder(root):
        train = list_folder(root, "")
        return train, Listing(train.classes), True
    train = LISTERS[name](root, "train")
    return train, LISTERS[name](root, "test", train.classes), False


def input_config(data_config: dict[str, Any], model_name: str | None) -> dict[str, Any]:
    """The eval transform's input size, interpolation, crop: the model's timm ``pretrained_cfg`` (what its
    weights expect) with ``data.image_size``, ``crop_pct`` and ``interpolation`` overriding it."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name) if model_name else None
    size = data_config["image_size"]
    args = {"input_size": (3, size, size) if size else None, "crop_pct": data_config["crop_pct"],
            "interpolation": data_config["interpolation"]}
    resolved = resolve_data_config(args, pretrained_cfg=cfg.to_dict() if cfg else {})
    return {key: resolved[key] for key in ("input_size", "interpolation", "crop_pct", "crop_mode")}


def prepare_files(data_config: dict[str, Any], seed: int, out_table: str, out_splits: str,
                  model_name: str | None = None) -> dict[str, int]:
    """List the images (no decoding), split them like the tensors path and write the table and the split."""
    root = os.path.abspath(data_config["root"])
    train, test, one_folder = official_splits(root, data_config["name"])
    kept_train = subsample(len(train), data_config["max_train"], seed)
    kept_test = subsample(len(test), data_config["max_test"], seed + 1)
    paths = [train.rows["path"][i] for i in kept_train] if one_folder else None
    parts = drawn_split(data_config, seed, len(kept_train), paths)
    chosen = {split: (train, kept_train[parts[split]]) for split in ("pretrain", "train", "val")}
    columns = {name: [] for name in TABLE_SCHEMA.names}
    for split, pieces in [*((s, [c]) for s, c in chosen.items()), ("test", [(test, kept_test),
                                                                            (train, kept_train[parts["test_extra"]])])]:
        for listing, rows in pieces:
            columns["split"] += [split] * len(rows)
            for name, values in listing.rows.items():
                columns[name] += [values[i] for i in rows]
    table = pa.table(columns, schema=TABLE_SCHEMA)
    inputs = input_config(data_config, model_name)
    data = FileData(table, {"root": root, "classes": train.classes, "mean": [0.0] * 3, "std": [1.0] * 3, **inputs,
                            "skip_corrupt": False})
    sample = np.concatenate([data.rows["pretrain"], data.rows["train"]])
    sample = np.sort(np.random.default_rng(seed).permutation(sample)[:STATISTICS_IMAGES])
    norm = normalisation(data_config, 3, model_name, lambda: data.table_images(sample))
    meta = {"root": root, "classes": train.classes, **norm, **inputs, "name": data_config["name"],
            "normalize": data_config["normalize"], "skip_corrupt": data_config["skip_corrupt"]}
    atomic_write_parquet(table.replace_schema_metadata({"soupflow": json.dumps(meta)}), out_table)
    atomic_write_text(json.dumps(written_split(parts, kept_train, kept_test, one_folder)), out_splits)
    log.info("listed %d train and %d test images of %d classes in %s (%d non-image files ignored)", len(train),
             len(test), len(train.classes), root, train.skipped + test.skipped)
    return {split: int((table["split"].to_numpy(zero_copy_only=False) == split).sum()) for split in
            ("pretrain", "train", "val", "test")}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's, numpy's and torch's random state seeded for one image's transform. In the main process
    (no workers) they are put back afterwards: the training loop's own random state must not move; a
    worker's state is its own."""
    states = None if torch.utils.data.get_worker_info() else (random.getstate(), np.random.get_state(),
                                                               torch.get_rng_state())
    random.seed(seed), np.random.seed(seed % 2**32), torch.default_generator.manual_seed(seed)  # the CPU one alone
    try:
        yield
    finally:
        if states is not None:
            random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])


def pin_batches(device: torch.device) -> bool:
    """Whether a job's batches are put in pinned (page-locked) memory: on CUDA only, where the DataLoader's
    pinning thread does it and ``stream``'s ``non_blocking`` copy then overlaps the GPU's work; on a CPU
    pinning is a copy for nothing."""
    return torch.device(device).type == "cuda"


def image_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of one image's training transform: its run's seed, the epoch, its position in the epoch."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + position


class ImageFiles(torch.utils.data.Dataset):
    """Every image of the table, read through the eval transform or a training transform; items are
    (table row, seed, ``TrainTransform`` or None): the seed of the training transform (``image_seed``), or -1.
    Each worker builds a transform the first time an item asks for it."""

    def __init__(self, data: "FileData", skip_corrupt: bool):
        self.data, self.skip_corrupt = data, skip_corrupt
        self.transforms: dict[TrainTransform | None, Any] = {}

    def __len__(self) -> int:
        return len(self.data.columns["label"])

    def __getitem__(self, item: tuple[int, int, "TrainTransform | None"]):
        row, seed, train = item
        if train not in self.transforms:
            self.transforms[train] = self.data.transform(train)
        try:
            image = self.data.decode(row)
        except DataError:
            if not self.skip_corrupt:
                raise
            return None
        with seeded(seed) if seed >= 0 else contextlib.nullcontext():
            return self.transforms[train](image), int(self.data.columns["label"][row])


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """uint8 images and labels of the images that could be read, and how many could not (skip_corrupt).
    torch's ``default_collate`` stacks a worker's batch straight into shared memory: no private copy."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), len(batch)
    images, labels = torch.utils.data.default_collate(kept)
    return images, labels, len(batch) - len(kept)


class Passes(torch.utils.data.Sampler):
    """The batches of the next pass, set before each pass: one loader (and one set of workers, kept between
    passes) serves every split, batch size and transform of a job; the main process iterates this sampler.
    Batches are made lazily: an epoch's items cost the memory of its order, not of a Python object each."""

    def __init__(self) -> None:
        self.rows: torch.Tensor = torch.empty(0, dtype=torch.int64)  # table rows, in the pass's order
        self.batch_size, self.train = 1, None
        self.seed_of: Callable[[int], int] | None = None  # the i-th item's training seed

    def __iter__(self):
        batch, i = [], 0
        for chunk in torch.as_tensor(self.rows).split(65536):
            for row in chunk.tolist():
                batch.append((row, self.seed_of(i) if self.seed_of is not None else -1, self.train))
                i += 1
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)


@dataclass(frozen=True)
class TrainTransform:
    """A fine-tune's per-image training transform (timm's ``create_transform``): a horizontal flip with
    probability ``hflip``, RandomResizedCrop down to ``crop_scale`` of the area, a timm ``auto_augment``
    policy. Without either, the eval transform (resize, centre crop) and the flip; with a policy alone, the
    whole image (no random crop)."""

    hflip: float = 0.0
    crop_scale: float | None = None
    auto_augment: str | None = None


class FileData(PreparedData):
    """The listed images of one experiment (``prepare_files``'s table), read through DataLoader workers."""

    def __init__(self, table: pa.Table, meta: dict[str, Any], path: str = "", workers: int = 0, pin: bool = False):
        super().__init__(path, meta["classes"], meta["mean"], meta["std"])
        self.meta, self.workers, self.pin = meta, workers, pin
        self.columns = {name: table[name].to_numpy(zero_copy_only=False) for name in TABLE_SCHEMA.names}
        self.rows = {name: np.flatnonzero(self.columns["split"] == name) for name in ("pretrain", "train", "val", "test")}
        self._plan, self._loader = Passes(), None

    @classmethod
    def open(cls, path: str, workers: int = 0, pin: bool = False) -> "FileData":
        """The table at ``path``, read by ``workers`` DataLoader processes (started now: ``start``), its batches
        pinned when ``pin`` (``pin_batches``)."""
        table = pq.read_table(path)
        return cls(table, json.loads(table.schema.metadata[b"soupflow"]), path, workers, pin).start()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_size"])

    def labels(self, split: str) -> torch.Tensor:
        return torch.from_numpy(self.columns["label"][self.rows[split]].astype(np.int64))

    def decode(self, row: int) -> Image.Image:
        """One image (a row of the table) as RGB, from its file or tar member. A file whose size changed since it
        was listed, or that does not decode, is a DataError naming it."""
        columns = self.columns
        path, member = os.path.join(self.meta["root"], columns["path"][row]), columns["member"][row]
        try:
            with open(path, "rb") as handle:
                if member is None and os.fstat(handle.fileno()).st_size != columns["size"][row]:
                    raise DataError(f"{path} changed since prepare_data listed it; rerun with --forcerun prepare_data")
                handle.seek(max(0, int(columns["offset"][row])))
                raw = handle.read(int(columns["size"][row]))
            with Image.open(io.BytesIO(raw)) as image:
                return image.convert("RGB")
        except DataError:
            raise
        except Exception as error:  # PIL raises many kinds for a damaged file
            where = f"{path}:{member}" if member is not None else path
            raise DataError(f"{where} cannot be read as an image ({type(error).__name__}: {error}); replace or remove "
                            "it, or set data.skip_corrupt: true to skip such files") from None

    def transform(self, train: TrainTransform | None = None):
        """timm's eval transform (``train`` None) or training transform, ending in uint8 tensors (normalisation
        happens on the job's device)."""
        from timm.data import create_transform

        meta = self.meta
        common = {"input_size": tuple(meta["input_size"]), "interpolation": meta["interpolation"],
                  "use_prefetcher": True}
        if train is None or (train.crop_scale is None and train.auto_augment is None):
            eval_transform = create_transform(**common, is_training=False, crop_pct=meta["crop_pct"],
                                              crop_mode=meta["crop_mode"])
            if train is None or not train.hflip:
                return eval_transform
            from torchvision.transforms import Compose, RandomHorizontalFlip

            return Compose([RandomHorizontalFlip(train.hflip), eval_transform])
        whole = train.crop_scale is None  # a policy without random crops: the whole image, square
        return create_transform(**common, is_training=True, scale=(1.0, 1.0) if whole else (train.crop_scale, 1.0),
                                ratio=(1.0, 1.0) if whole else None, hflip=train.hflip, color_jitter=None,
                                auto_augment=train.auto_augment)

    def start(self) -> "FileData":
        """Fork the job's DataLoader workers now, while this process is small: a worker's memory is the pages it
        shares with this process when forked, and those this process writes to later become the worker's own
        (copy on write). Objects the garbage collector would visit are frozen first, as the gc module advises."""
        if self.workers and self._loader is None:
            images = ImageFiles(self, bool(self.meta["skip_corrupt"]))
            images.transforms[None] = self.transform()  # built (timm's modules imported) once, before the fork
            gc.freeze()
            self._loader = torch.utils.data.DataLoader(
                images, batch_sampler=self._plan,
                num_workers=self.workers, collate_fn=collate, persistent_workers=True,
                pin_memory=self.pin, prefetch_factor=2, generator=torch.Generator())
            for _ in self._loader:  # an empty pass starts the workers
                pass
        return self

    def stream(self, split: str, positions: torch.Tensor, batch_size: int, device: torch.device,
               train: TrainTransform | None = None, seed_of: Callable[[int], int] | None = None) -> Batches:
        """Batches of the images at ``positions`` of a split on ``device`` (through the training transform
        ``train``, the i-th seeded by ``seed_of(i)``); unreadable images skipped are counted."""
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(ImageFiles(self, bool(self.meta["skip_corrupt"])),
                                                       batch_sampler=self._plan, collate_fn=collate,
                                                       pin_memory=self.pin)
        plan = self._plan
        plan.rows = torch.from_numpy(self.rows[split])[torch.as_tensor(positions, dtype=torch.int64)]
        plan.batch_size, plan.train, plan.seed_of = batch_size, train, seed_of
        for images, labels, skipped in self._loader:
            if skipped:
                self.skipped += skipped
                log.warning("%d image(s) of %s could not be read and were skipped (data.skip_corrupt)", skipped, split)
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def batches(self, split: str, order: torch.Tensor | None, batch_size: int, device: torch.device) -> Batches:
        return self.stream(split, torch.arange(len(self.rows[split])) if order is None else order, batch_size, device)

    def images(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        images = [batch for batch, _ in self.batches(split, indices, 256, torch.device("cpu"))]
        return torch.cat(images) if images else torch.empty((0, *self.image_shape), dtype=torch.uint8)

    def table_images(self, rows: np.ndarray) -> torch.Tensor:
        """Eval-transformed uint8 images of rows of the table, read here (prepare_files' statistics sample)."""
        dataset = ImageFiles(self, False)
        return torch.stack([dataset[(int(row), -1, None)][0] for row in rows])
