"""One route for the config: a nested ``--config`` override reaches the jobs as the same value the same YAML in a
config file gives (Snakemake hands nested --config values over as text; every job gets the config the parse
resolved, never Snakemake's raw one)."""

import copy
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, SMOKE
from safetensors.torch import load_file

from soupflow.plan.config import load_schema

pytestmark = pytest.mark.slow  # runs the workflow (or trains) in subprocesses: the slow tier

#: a value other than the default for every key of these sections, valid on the smoke data
SAMPLES = {
    "pretrain": {"epochs": 3, "lr": 0.03, "weight_decay": 0.001, "batch_size": 16, "optimizer": "adamw",
                 "momentum": 0.8, "schedule": "cosine", "augmentation": "flip", "seed": 2, "task": "rotation",
                 "keep_every": 1},
    "finetune": {"lr": 0.03, "weight_decay": 0.0002, "epochs": 1, "batch_size": 16, "label_smoothing": 0.1,
                 "augmentation": "flip", "optimizer": "adamw", "momentum": 0.8, "nesterov": False,
                 "schedule": "cosine", "warmup_fraction": 0.2, "seed": 4, "branch_epoch": 1,
                 "perturbation": "salty2", "bn_statistics": "frozen", "data_fraction": 0.5, "mixup": 0.2,
                 "cutmix": 1.0, "random_erase": 0.25, "drop_path_rate": 0.1, "layer_decay": 0.8,
                 "wd_norm_bias": False, "grad_accum_steps": 2, "clip_grad": 1.0, "ema_decay": 0.99},
    "data": {"name": "fashion_mnist", "root": SMOKE["data"]["root"], "download": True, "image_size": 16,
             "normalize": {"mean": [0.3], "std": [0.4]}, "pretrain_fraction": 0.3, "val_fraction": 0.25,
             "test_fraction": 0.1, "max_train": 500, "max_test": None, "shift_sets": {"corrupted": "corruptions"}},
    "analysis": {"pairs": 5, "seed": 1, "jobs": 1, "color_by": "lr", "bn": ["keep"], "bn_images": 64,
                 "branching": {"epochs": [1], "perturbations": ["salty2"]},
                 "corruptions": {"types": ["contrast", "jpeg"], "severities": [2], "max_images": 50, "seed": 1}},
    "training": {"precision": "fp32", "checkpoint_every_steps": 0, "devices_per_run": 2, "sync_bn": True,
                 "compile": True, "workers": 1},
    "evaluation": {"batch_size": 100, "memory_mb": 512, "device": "cpu"},
}
#: the keys only data.format files takes, sampled on a folder of images
FILES_SAMPLES = {
    "finetune": {"crop_scale": 0.5, "auto_augment": "rand-m9-mstd0.5-inc1", "augmentation": "flip"},
    "data": {"name": "image_folder", "format": "files", "image_size": 16, "crop_pct": 0.9,
             "interpolation": "bicubic", "skip_corrupt": True, "normalize": "pretrained", "pretrain_fraction": 0.3,
             "val_fraction": 0.25},
}

#: the few-label transfer keys, which take the class split instead of the fractions
CLASS_SAMPLES = {"data": {"pretrain_classes": [1, 3], "finetune_classes": [0, 2, 4], "labels_per_class": 20,
                          "pretrain_fraction": 0.0, "test_fraction": 0.0}}


def _keys(schema: dict, sample: dict, prefix: str = "") -> tuple[set, set]:
    """(every key the schema has, every key the sample sets) below a section, nested objects included."""
    if "$ref" in schema:
        schema = load_schema()["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    known, given = set(), set()
    for key, inner in schema.get("properties", {}).items():
        known.add(prefix + key)
        if key in sample:
            given.add(prefix + key)
            if inner.get("type") == "object" and "properties" in inner:
                deeper = _keys(inner, sample[key], f"{prefix}{key}.")
                known, given = known | deeper[0], given | deeper[1]
    return known, given


def test_the_samples_set_every_key_of_their_sections():
    for section, sample in SAMPLES.items():
        extra = {**FILES_SAMPLES.get(section, {}), **CLASS_SAMPLES.get(section, {})}
        known, given = _keys(load_schema()["properties"][section], {**sample, **extra})
        assert known == given, f"{section}: no sample for {sorted(known - given)}"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of 16 px PNG images of two classes."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 6)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / split / label / f"{index}.png")
    return root


@pytest.mark.parametrize("section", sorted(FILES_SAMPLES))
def test_a_nested_config_override_of_the_files_keys_gives_what_a_config_file_gives(tmp_path, images, section):
    base = copy.deepcopy(SMOKE)
    base["data"] = {**FILES_SAMPLES["data"], "root": str(images)}
    base["pretrain"] = {**base["pretrain"], "augmentation": "flip"}
    in_file = copy.deepcopy(base)
    in_file[section] = {**base.get(section, {}), **FILES_SAMPLES[section]}
    from_file = _run(tmp_path / "file", in_file, "results/config.yaml")
    override = copy.deepcopy(base)
    if section == "data":
        override["data"] = {"name": "image_folder", "root": str(images)}
    from_override = _run(tmp_path / "override", override, "results/config.yaml", "--config",
                         f"{section}={_as_flow(FILES_SAMPLES[section])}")
    resolved = yaml.safe_load((from_file / "config.yaml").read_text())
    assert yaml.safe_load((from_override / "config.yaml").read_text()) == resolved



def test_a_nested_config_override_of_the_class_split_keys_gives_what_a_config_file_gives(tmp_path):
    in_file = copy.deepcopy(SMOKE)
    in_file["data"] = {**SMOKE["data"], **CLASS_SAMPLES["data"]}
    from_file = _run(tmp_path / "file", in_file, "results/config.yaml")
    from_override = _run(tmp_path / "override", copy.deepcopy(SMOKE), "results/config.yaml", "--config",
                         f"data={_as_flow(in_file['data'])}")
    resolved = yaml.safe_load((from_file / "config.yaml").read_text())
    assert resolved["data"]["finetune_classes"] == [0, 2, 4]
    assert yaml.safe_load((from_override / "config.yaml").read_text()) == resolved

def _run(folder, config, *args):
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile",
               str(folder / "config.yaml"), "--directory", str(folder), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return folder / "results"


def _as_flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


@pytest.mark.parametrize("section", sorted(SAMPLES))
def test_a_nested_config_override_gives_the_jobs_what_a_config_file_gives(tmp_path, section):
    """The resolved config every job is handed, as the job that writes it (rule resolved_config) received it."""
    in_file = copy.deepcopy(SMOKE)
    in_file[section] = SAMPLES[section]
    from_file = _run(tmp_path / "file", in_file, "results/config.yaml")
    base = copy.deepcopy(SMOKE)
    base.pop(section, None)
    from_override = _run(tmp_path / "override", base, "results/config.yaml", "--config",
                         f"{section}={_as_flow(SAMPLES[section])}")
    resolved = yaml.safe_load((from_file / "config.yaml").read_text())
    assert yaml.safe_load((from_override / "config.yaml").read_text()) == resolved
    assert resolved[section] == {**resolved[section], **SAMPLES[section]}  # the sample arrived, typed


def test_the_init_built_from_a_nested_override_is_the_init_of_the_same_config_file(tmp_path):
    """The override of the README's one-off change example, through the init job itself."""
    pretrain = {"epochs": 2, "lr": 0.02, "batch_size": 32, "keep_every": 1}
    from_file = _run(tmp_path / "file", {**SMOKE, "pretrain": pretrain}, "results/init/model.safetensors")
    base = {key: value for key, value in SMOKE.items() if key != "pretrain"}
    from_override = _run(tmp_path / "override", base, "results/init/model.safetensors", "--config",
                         f"pretrain={_as_flow(pretrain)}")
    for name in ("model.safetensors", "epoch_001.safetensors", "epoch_002.safetensors"):
        override, file = load_file(from_override / "init" / name), load_file(from_file / "init" / name)
        assert override.keys() == file.keys() and all(torch.equal(override[k], file[k]) for k in file), name
