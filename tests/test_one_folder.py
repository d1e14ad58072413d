"""An image_folder of class folders without train/ and test/: the workflow draws a seeded, stratified split,
image by image, that adding images never changes for the others; train/ and test/ folders still win."""

import copy
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT
from PIL import Image

from soupflow.plan.config import ConfigError, resolve_config
from soupflow.plan.one_folder import hashed_parts, is_one_folder
from soupflow.store.datasets import prepare
from soupflow.store.prepared import split_indices

CLASSES = ("ant", "bee", "cat")
#: fixed constants: nothing here decodes images to measure them
DATA = {"name": "image_folder", "image_size": 8, "pretrain_fraction": 0.0, "val_fraction": 0.2,
        "test_fraction": 0.2, "normalize": {"mean": [0.5], "std": [0.25]}}
FILES = {**DATA, "format": "files", "crop_pct": 1.0, "interpolation": "bilinear"}


def photos(root, names, suffix="png", seed=0):
    """8x8 px images ``root/<class>/<name>.<suffix>`` for each class."""
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / label / f"{name}.{suffix}")
    return root


def split_of_each(out, config, seed=0):
    """{path in data.root: split} as ``prepare`` (files format) writes it in its table."""
    prepare(config, seed, str(out / "files.parquet"), str(out / "splits.json"))
    table = pq.read_table(out / "files.parquet").to_pydict()
    return dict(zip(table["path"], table["split"]))


def test_the_split_is_stratified_seeded_disjoint_and_covers_every_image(tmp_path):
    root = photos(tmp_path / "photos", [f"{i:03d}" for i in range(40)])
    assert is_one_folder(str(root))
    splits = split_of_each(tmp_path, {**FILES, "root": str(root)})
    assert len(splits) == 3 * 40  # every image, each in exactly one split (a dict: one split per path)
    for label in CLASSES:
        mine = [split for path, split in splits.items() if path.startswith(f"{label}/")]
        shares = {split: mine.count(split) / len(mine) for split in ("train", "val", "test")}
        assert mine.count("pretrain") == 0
        # stratified: each class is split at the fractions (up to the noise of 40 draws, sd 0.063)
        assert abs(shares["val"] - 0.2) < 0.16 and abs(shares["test"] - 0.2) < 0.16, (label, shares)
    recorded = json.loads((tmp_path / "splits.json").read_text())
    indices = [set(recorded[part]) for part in ("pretrain", "train", "val", "test_extra")]
    assert recorded["test"] == [] and set().union(*indices) == set(range(120))
    assert sum(map(len, indices)) == 120  # disjoint
    other = split_of_each(tmp_path, {**FILES, "root": str(root)}, seed=1)
    assert other.keys() == splits.keys() and other != splits  # another seed, another split


def test_adding_images_moves_no_image_to_another_split(tmp_path):
    root = photos(tmp_path / "photos", [f"{i:03d}" for i in range(20)])
    before = split_of_each(tmp_path, {**FILES, "root": str(root)})
    photos(root, [f"{i:03d}" for i in range(20, 30)] + ["000a", "aaa"], seed=1)  # among and after the old ones
    after = split_of_each(tmp_path, {**FILES, "root": str(root)})
    assert len(after) == len(before) + 3 * 12
    assert {path: after[path] for path in before} == before


def test_both_formats_record_the_same_split_and_the_test_split_is_the_held_out_share(tmp_path):
    root = photos(tmp_path / "photos", [f"{i:03d}" for i in range(10)], suffix="jpg")
    files = prepare({**FILES, "root": str(root)}, 0, str(tmp_path / "f.parquet"), str(tmp_path / "f.json"))
    tensors = prepare({**DATA, "root": str(root)}, 0, str(tmp_path / "t.safetensors"), str(tmp_path / "t.json"))
    assert files == tensors and sum(tensors.values()) == 30 and min(tensors["val"], tensors["test"]) > 0
    assert (tmp_path / "f.json").read_text() == (tmp_path / "t.json").read_text()
    recorded = json.loads((tmp_path / "t.json").read_text())
    assert len(recorded["test_extra"]) == tensors["test"]


def test_train_and_test_folders_still_win_and_split_as_before(tmp_path):
    root = tmp_path / "photos"
    photos(root / "train", [f"{i:03d}" for i in range(10)])
    photos(root / "test", ["t0", "t1"])
    assert not is_one_folder(str(root))
    prepare({**DATA, "root": str(root)}, 3, str(tmp_path / "t.safetensors"), str(tmp_path / "s.json"))
    recorded = json.loads((tmp_path / "s.json").read_text())
    expected = split_indices(30, 0.0, 0.2, 3, 0.2)
    assert {part: recorded[part] for part in expected} == {part: rows.tolist() for part, rows in expected.items()}
    assert recorded["test"] == list(range(6))


def test_the_hash_split_keeps_to_the_fractions_and_cuts_pretrain_first():
    paths = [f"c/{i}.jpg" for i in range(20000)]
    parts = hashed_parts(paths, {"pretrain_fraction": 0.1, "val_fraction": 0.2, "test_fraction": 0.3}, 0)
    shares = {part: len(rows) / len(paths) for part, rows in parts.items()}
    assert shares == pytest.approx({"pretrain": 0.1, "val": 0.2, "test_extra": 0.3, "train": 0.4}, abs=0.015)


def config_for(root, **data):
    config = copy.deepcopy(yaml.safe_load((ROOT / "config.yaml").read_text()))
    config["data"] = {**DATA, "root": str(root), "pretrain_fraction": 0.2, **data}  # the default init pretrains
    return config


def rejected(config) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_config(config, check_model=False)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_parse_time_errors_name_data_root(tmp_path):
    (tmp_path / "empty").mkdir()
    message = rejected(config_for(tmp_path / "empty"))
    assert "'data.root'" in message and "0 class folder(s)" in message
    few = photos(tmp_path / "few", ["0", "1", "2"])
    message = rejected(config_for(few))
    assert "'data.root'" in message and "'ant' holds 3 image(s)" in message and "at least 5" in message
    assert "'data.test_fraction'" in rejected(config_for(photos(tmp_path / "ok", list("abcde")), test_fraction=0.0))
    resolve_config(config_for(tmp_path / "ok"), check_model=False)  # five images a class: enough for 0.2 each
    only_train = tmp_path / "half"
    photos(only_train / "train", list("abcde"))
    assert "missing test" in rejected(config_for(only_train))
