"""One folder of class folders (``data.root/<class>/…/<image>``, no ``train/`` or ``test/``): the split the
workflow draws itself. Parse time: no numpy, so the checks and the jobs share it.

Each image's split is a function of that image alone: a seeded hash of its path relative to ``data.root``
(its class folder, then its path inside it) read as a number in [0, 1) and cut at the fractions
(``pretrain_fraction``, ``val_fraction``, ``test_fraction``, the rest train), in the order ``split_indices``
cuts a permutation. Adding (or removing) images therefore never moves another image between splits, and
another seed draws another split. That is the only kind of split with that property (an image alone in its
class must land where it lands among others), so each class's shares are the fractions up to sampling noise
(about ``sqrt(n f (1 - f))`` images of a class of ``n``), not to the image; the parse-time check asks every
class for enough images that each split expects at least one.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

#: what counts as an image (torchvision's ImageFolder's list, so that every reader lists the same files)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: the folders of the other layout: either of them in ``data.root`` means ``train/`` + ``test/``
SPLIT_FOLDERS = ("train", "test")
#: the parts cut from the images, in order (``soupflow.store.prepared.split_indices``'s), with their fraction keys
PARTS = (("pretrain", "pretrain_fraction"), ("val", "val_fraction"), ("test_extra", "test_fraction"))


def is_one_folder(root: str) -> bool:
    """``root`` is a folder that holds neither ``train/`` nor ``test/``: its sub-folders are the classes."""
    return os.path.isdir(root) and not any(os.path.isdir(os.path.join(root, name)) for name in SPLIT_FOLDERS)


def class_folders(root: str) -> list[str]:
    """The class folders of ``root``, sorted (torchvision's ImageFolder's classes)."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def count_images(folder: str) -> int:
    """Images under ``folder`` (any depth, links followed): names only, nothing opened."""
    return sum(name.lower().endswith(IMAGE_SUFFIXES) for _, _, names in os.walk(folder, followlinks=True)
               for name in names)


def image_share(seed: int, path: str) -> float:
    """Where an image falls in [0, 1): blake2b of the seed and its path relative to ``data.root`` (``/``
    separators on every system), the same on every machine and Python."""
    key = f"{seed}\0{path.replace(os.sep, '/')}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0 ** 64


def split_of(share: float, data: dict[str, Any]) -> str:
    """The part an image at ``share`` belongs to: pretrain, val, test_extra (the test split) or train."""
    edge = 0.0
    for part, key in PARTS:
        edge += data[key]
        if share < edge:
            return part
    return "train"


def hashed_parts(paths: list[str], data: dict[str, Any], seed: int) -> dict[str, list[int]]:
    """The positions in ``paths`` (relative to ``data.root``) of each part, ascending: what
    ``split_indices`` returns for the other layout, drawn image by image."""
    parts: dict[str, list[int]] = {part: [] for part, _ in PARTS} | {"train": []}
    for position, path in enumerate(paths):
        parts[split_of(image_share(seed, path), data)].append(position)
    return parts


def images_needed(data: dict[str, Any]) -> int:
    """The fewest images a class needs for each of its non-empty splits to expect at least one image."""
    shares = [data[key] for _, key in PARTS] + [1.0 - sum(data[key] for _, key in PARTS)]
    return max(math.ceil(1.0 / share - 1e-9) for share in shares if share > 0)
