"""Image files to try ``data.format: files`` on: Fashion-MNIST (or any uint8 images) written as an image
folder (``<split>/<class>/<n>.jpg``) or as WebDataset tar shards (``<split>/shard-NNNNN.tar`` holding
``<key>.jpg`` and ``<key>.cls``), at a chosen size.

    python -m soupflow.store.image_folders OUT --size 224 --count 20000 [--test 2000] [--format jpg|png]
        [--shards 8]   # tar shards instead of a folder
        [--one-folder] # OUT/<class>/<n>.jpg, no train/ and test/: the layout of a user's own photos
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def encoded(image: np.ndarray, size: int | None, suffix: str) -> bytes:
    """One uint8 HW or HWC image as RGB ``suffix`` bytes (jpg: quality 90), resized to ``size`` (bilinear)."""
    picture = Image.fromarray(image).convert("RGB")
    if size and picture.size != (size, size):
        picture = picture.resize((size, size), Image.BILINEAR)
    out = io.BytesIO()
    picture.save(out, format="JPEG" if suffix == "jpg" else suffix.upper(), **({"quality": 90} if suffix == "jpg" else {}))
    return out.getvalue()


def write_folder(root: Path, split: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 size: int | None = None, suffix: str = "jpg") -> None:
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / split / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:07d}.{suffix}").write_bytes(encoded(image, size, suffix))


def write_shards(root: Path, split: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 size: int | None = None, suffix: str = "jpg", shards: int = 4) -> None:
    """WebDataset shards: each sample a ``<key>.<suffix>`` image and a ``<key>.cls`` holding its class name."""
    (root / split).mkdir(parents=True, exist_ok=True)
    for shard, rows in enumerate(np.array_split(np.arange(len(labels)), shards)):
        with tarfile.open(root / split / f"shard-{shard:05d}.tar", "w") as tar:
            for index in rows:
                for name, payload in ((f"{index:07d}.{suffix}", encoded(images[index], size, suffix)),
                                      (f"{index:07d}.cls", classes[int(labels[index])].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def export_fashion_mnist(out: Path, size: int | None, count: int, test: int, suffix: str = "jpg",
                         shards: int = 0, root: str = "/usr/share/datasets/fashion-mnist") -> None:
    """The first ``count`` training and ``test`` test images of Fashion-MNIST under ``out``."""
    from soupflow.store.data import load_idx_dataset

    raw = load_idx_dataset(root)
    if test < 0:  # one folder of class folders (a split the workflow draws itself)
        images, labels = raw["train"]
        write_folder(out, "", images[:count, 0], labels[:count], list(FASHION_CLASSES), size, suffix)
        return
    for split, limit in (("train", count), ("test", test)):
        images, labels = raw[split]
        images, labels = images[:limit, 0], labels[:limit]
        if shards:
            write_shards(out, split, images, labels, list(FASHION_CLASSES), size, suffix, shards)
        else:
            write_folder(out, split, images, labels, list(FASHION_CLASSES), size, suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--count", type=int, default=20000, help="training images")
    parser.add_argument("--test", type=int, default=2000, help="test images")
    parser.add_argument("--format", choices=["jpg", "png"], default="jpg")
    parser.add_argument("--shards", type=int, default=0, help="write this many WebDataset tar shards per split")
    parser.add_argument("--one-folder", action="store_true",
                        help="OUT/<class>/*.jpg from --count training images, without train/ and test/ folders")
    args = parser.parse_args()
    test = -1 if args.one_folder else args.test
    export_fashion_mnist(args.out, args.size, args.count, test, args.format, args.shards)


if __name__ == "__main__":
    main()
