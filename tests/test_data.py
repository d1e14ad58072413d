import gzip
import json

import numpy as np
import pytest
import torch

from soupflow.store.data import TensorData, read_idx
from soupflow.store.datasets import prepare
from soupflow.store.prepared import DataError, split_indices


def write_idx(path, array: np.ndarray):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_tiny_idx_dataset(folder, n_train=200, n_test=50):
    """A random MNIST-format data set of 28x28 images and cycling labels, gzipped like Debian's files."""
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return folder


@pytest.fixture
def tiny_idx(tmp_path):
    return write_tiny_idx_dataset(tmp_path)


def test_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), array)


def test_splits_are_disjoint_complete_and_seeded():
    a = split_indices(1000, 0.5, 0.1, seed=3)
    assert sum(len(v) for v in a.values()) == 1000
    assert len(np.unique(np.concatenate(list(a.values())))) == 1000
    assert len(a["pretrain"]) == 500 and len(a["val"]) == 100
    b = split_indices(1000, 0.5, 0.1, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], split_indices(1000, 0.5, 0.1, seed=4)["val"])


def test_a_test_fraction_moves_training_images_to_test_and_leaves_the_other_splits_as_they_were():
    plain, bigger = split_indices(1000, 0.5, 0.1, seed=3), split_indices(1000, 0.5, 0.1, seed=3, test_fraction=0.2)
    assert len(plain["test_extra"]) == 0 and len(bigger["test_extra"]) == 200
    assert np.array_equal(plain["pretrain"], bigger["pretrain"]) and np.array_equal(plain["val"], bigger["val"])
    assert np.array_equal(np.sort(np.concatenate([bigger["test_extra"], bigger["train"]])), plain["train"])


def test_prepare_appends_the_extra_test_images_after_the_official_ones(tiny_idx, tmp_path):
    config = {"name": "fashion_mnist", "root": str(tiny_idx), "pretrain_fraction": 0.5, "val_fraction": 0.2,
              "test_fraction": 0.1}
    sizes = prepare(config, 0, str(tmp_path / "d.safetensors"), str(tmp_path / "s.json"))
    assert sizes == {"pretrain": 100, "train": 40, "val": 40, "test": 70}
    split = json.loads((tmp_path / "s.json").read_text())
    raw_x = read_idx(tiny_idx / "train-images-idx3-ubyte.gz")
    test_x = TensorData(tmp_path / "d.safetensors").split("test")[0]
    assert torch.equal(test_x[50:, 0], torch.from_numpy(raw_x[split["test_extra"]]))
    from soupflow.store.prepared import test_rows

    rows = test_rows(split)
    assert len(rows) == 70 and rows[0] == ("test", split["test"][0]) and rows[50] == ("train", split["test_extra"][0])
    assert not set(split["test_extra"]) & set(split["train"] + split["val"] + split["pretrain"])


def test_prepare_writes_tensors_and_the_split(tiny_idx, tmp_path):
    config = {"name": "fashion_mnist", "root": str(tiny_idx), "pretrain_fraction": 0.5, "val_fraction": 0.2,
              "max_train": None, "max_test": None}
    sizes = prepare(config, 0, str(tmp_path / "d.safetensors"), str(tmp_path / "s.json"))
    assert sizes == {"pretrain": 100, "train": 60, "val": 40, "test": 50}
    data = TensorData(tmp_path / "d.safetensors")
    images, labels = data.split("val")
    assert images.dtype == torch.uint8 and images.shape == (40, 1, 28, 28) and labels.dtype == torch.int64
    split = json.loads((tmp_path / "s.json").read_text())
    assert len(split["val"]) == 40 and len(split["test"]) == 50
    batch = data.normalise(images)
    assert batch.dtype == torch.float32 and abs(float(batch.mean())) < 0.5


def test_missing_files_say_where_to_put_them(tmp_path):
    config = {"name": "fashion_mnist", "root": str(tmp_path), "pretrain_fraction": 0.5, "val_fraction": 0.2}
    with pytest.raises(DataError, match="data.root"):
        prepare(config, 0, str(tmp_path / "d.safetensors"), str(tmp_path / "s.json"))
    assert not (tmp_path / "d.safetensors").exists()


def test_cifar_without_files_or_network_is_one_clear_message(tmp_path):
    from soupflow.store.data import load_cifar

    with pytest.raises(DataError, match="data.download"):
        load_cifar("cifar10", str(tmp_path), download=False)


def test_image_folder_is_decoded_once_and_resized(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for label in ("cat", "dog"):
            folder = tmp_path / "imgs" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = {"name": "image_folder", "root": str(tmp_path / "imgs"), "image_size": 16, "pretrain_fraction": 0.0,
              "val_fraction": 0.25}
    sizes = prepare(config, 0, str(tmp_path / "d.safetensors"), str(tmp_path / "s.json"))
    assert sizes == {"pretrain": 0, "train": 18, "val": 6, "test": 8}
    data = TensorData(tmp_path / "d.safetensors")
    assert data.classes == ["cat", "dog"]
    assert data.split("test")[0].shape == (8, 3, 16, 16)


def test_image_size_resizes_every_split_once_and_keeps_flat_images_flat(tiny_idx, tmp_path):
    from soupflow.store.data import resize

    config = {"name": "fashion_mnist", "root": str(tiny_idx), "pretrain_fraction": 0.5, "val_fraction": 0.2,
              "image_size": 32}
    prepare(config, 0, str(tmp_path / "d.safetensors"), str(tmp_path / "s.json"))
    data = TensorData(tmp_path / "d.safetensors")
    assert data.image_shape == (1, 32, 32)
    assert all(data.split(s)[0].shape[-2:] == (32, 32) for s in ("pretrain", "train", "val", "test"))
    flat = np.full((3, 1, 28, 28), 77, dtype=np.uint8)
    assert (resize(flat, 40) == 77).all() and resize(flat, 28) is flat


def test_a_data_fraction_is_a_seeded_subset_of_distinct_fine_tuning_images():
    from soupflow.store.prepared import run_share

    assert run_share(1000, None, 0) is None and run_share(1000, 1.0, 0) is None  # all of them
    half, again, other = (run_share(1000, 0.5, seed) for seed in (3, 3, 4))
    assert len(half) == 500 == len(set(half.tolist())) and torch.equal(half, again)
    assert not torch.equal(half, other) and torch.equal(half, half.sort().values)


def test_every_data_set_name_has_one_loader_and_one_reader():
    from soupflow.plan.catalog import DATASETS
    from soupflow.store.data import LOADERS
    from soupflow.store.files import LISTERS

    assert set(LOADERS) == set(DATASETS) - {"image_shards"} and set(LISTERS) == {"image_folder", "image_shards"}


def test_a_class_split_holds_each_class_where_the_config_puts_it(tiny_idx, tmp_path):
    """Few-label transfer: pretraining classes only in pretrain; per fine-tuning class val, then exactly
    labels_per_class in train, and every other image of it in test with its official test images; labels are
    positions in each list; splits.json records it all."""
    config = {"name": "fashion_mnist", "root": str(tiny_idx), "pretrain_fraction": 0.0, "val_fraction": 0.25,
              "pretrain_classes": [1, 3], "finetune_classes": [8, 0, 4], "labels_per_class": 6}
    sizes = prepare(config, 0, str(tmp_path / "d.safetensors"), str(tmp_path / "s.json"))
    raw_y = read_idx(tiny_idx / "train-labels-idx1-ubyte.gz")  # 20 training and 5 test images per class
    assert sizes == {"pretrain": 40, "train": 18, "val": 15, "test": 3 * 5 + 3 * (20 - 5 - 6)}
    split, data = json.loads((tmp_path / "s.json").read_text()), TensorData(tmp_path / "d.safetensors")
    assert set(raw_y[split["pretrain"]]) == {1, 3} and data.pretrain_classes == ["1", "3"]
    assert data.num_classes == 3 and data.classes == ["8", "0", "4"]
    for name in ("train", "val", "test_extra"):
        assert set(raw_y[split[name]]) == {8, 0, 4}
    assert np.bincount(raw_y[split["train"]], minlength=10)[[8, 0, 4]].tolist() == [6, 6, 6]
    used = [i for name in ("pretrain", "train", "val", "test_extra") for i in split[name]]
    assert len(used) == len(set(used))  # disjoint
    assert sorted(split["test_extra"]) == sorted(i for i in range(200) if raw_y[i] in (8, 0, 4)
                                                 and i not in split["train"] + split["val"])
    assert torch.equal(data.labels("train"), torch.from_numpy(np.array([[8, 0, 4].index(c) for c in raw_y[split["train"]]])))
    assert data.labels("test").tolist()[:3] == [[8, 0, 4].index(c) for c in np.arange(50)[split["test"]][:3] % 10]
    assert split["finetune_classes"] == [8, 0, 4]


def test_too_few_images_for_labels_per_class_is_a_data_error_naming_the_key(tiny_idx, tmp_path):
    config = {"name": "fashion_mnist", "root": str(tiny_idx), "pretrain_fraction": 0.0, "val_fraction": 0.25,
              "pretrain_classes": [1], "finetune_classes": [0, 2], "labels_per_class": 16}
    with pytest.raises(DataError, match="data.labels_per_class 16"):
        prepare(config, 0, str(tmp_path / "d.safetensors"), str(tmp_path / "s.json"))
