"""Test sets under distribution shift (``data.shift_sets``): prepared in the experiment's classes, size and format,
each model's paired row against the best run, the checks before any job, and (slow tier) shift sets added to a
finished workflow: scored without retraining, in the shift table, the soups table, the summary and a figure."""

import copy
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMOKE, snakemake

from soupflow.jobs.shift import Scored, prepare_shift, shift_row
from soupflow.plan.config import resolve_config
from soupflow.plan.errors import ConfigError
from soupflow.plan.params import tracked
from soupflow.store.data import load_idx_dataset
from soupflow.store.datasets import open_data, prepare
from soupflow.store.image_folders import FASHION_CLASSES, write_folder
from soupflow.store.prepared import DataError
from soupflow.store.tables import with_shift_columns

FASHION = "/usr/share/datasets/fashion-mnist"
#: lossless 16 px images, so that both formats hold the same pixels
FOLDER = {"name": "image_folder", "image_size": 16, "pretrain_fraction": 0.25, "val_fraction": 0.25}
FILES = {**FOLDER, "format": "files", "crop_pct": 1.0, "interpolation": "bilinear"}


def _images(split: str, start: int, count: int, invert: bool = False, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images ``start:start+count`` of a split at ``size`` px (inverted: a shift of their contrast)."""
    images, labels = load_idx_dataset(FASHION)[split]
    picked = torch.from_numpy(images[start:start + count]).float()
    resized = torch.nn.functional.interpolate(picked, size=size, mode="bilinear", antialias=True)
    resized = resized.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    return (255 - resized if invert else resized), labels[start:start + count]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An image folder experiment (train/ and test/ of class folders) and a shift set of it: other test images,
    inverted, in class folders named as the training classes."""
    root = tmp_path_factory.mktemp("shift")
    for split, (start, count) in {"train": (0, 96), "test": (0, 32)}.items():
        write_folder(root / "data", split, *_images(split, start, count), list(FASHION_CLASSES), suffix="png")
    write_folder(root / "inverted", "", *_images("test", 100, 24, invert=True), list(FASHION_CLASSES), suffix="png")
    return root


def test_a_folder_shift_set_holds_the_same_pixels_and_labels_in_either_format(folders, tmp_path):
    """Decoded (tensors) or listed and streamed through the eval transform (files): the same images and labels,
    the labels those of their class folders in the training classes' order."""
    data = {}
    for name, section in (("tensors", FOLDER), ("files", FILES)):
        path = str(tmp_path / (f"{name}.safetensors" if name == "tensors" else f"{name}.parquet"))
        prepare({**section, "root": str(folders / "data")}, 0, path, str(tmp_path / f"{name}.json"), "test_resnet")
        out = str(tmp_path / (f"shift_{name}.safetensors" if name == "tensors" else f"shift_{name}.parquet"))
        assert prepare_shift({}, str(folders / "inverted"), path, out) == 24
        data[name] = open_data(out)
    tensors, files = data["tensors"], data["files"]
    assert tensors.classes == files.classes == sorted(FASHION_CLASSES)
    images, labels = _images("test", 100, 24, invert=True)
    expected = sorted(zip((FASHION_CLASSES[label] for label in labels), range(24)))  # the listing's order
    assert [tensors.classes[int(y)] for y in tensors.labels("test")] == [name for name, _ in expected]
    assert torch.equal(tensors.labels("test"), files.labels("test"))
    rows = torch.arange(24)
    assert torch.equal(tensors.images("test", rows), files.images("test", rows))
    first = expected[0][1]
    assert torch.equal(tensors.images("test", rows[:1])[0, 0], torch.from_numpy(images[first]))


def test_a_shift_folder_with_a_class_the_data_lacks_is_a_data_error_naming_it(folders, tmp_path):
    prepare({**FOLDER, "root": str(folders / "data")}, 0, str(tmp_path / "d.safetensors"), str(tmp_path / "s.json"))
    strange = tmp_path / "strange"
    shutil.copytree(folders / "inverted", strange)
    (strange / "bag").rename(strange / "handbag")
    with pytest.raises(DataError, match="handbag"):
        prepare_shift({}, str(strange), str(tmp_path / "d.safetensors"), str(tmp_path / "out.safetensors"))


@pytest.mark.parametrize("change, message", [
    ({"missing": "/no/such/folder"}, r"data\.shift_sets\.missing.*not a folder of class folders"),
    ({"bad name": "corruptions"}, r"data\.shift_sets"),
    ({"other": "OTHER"}, r"data\.shift_sets\.other.*handbag.*not training classes"),
    ({"empty": "EMPTY"}, r"data\.shift_sets\.empty.*'bag' holds no image"),
])
def test_bad_shift_sets_are_rejected_before_any_job_naming_the_key(folders, tmp_path, change, message):
    other, empty = tmp_path / "other", tmp_path / "empty"
    (other / "handbag").mkdir(parents=True)
    (other / "handbag" / "a.png").write_bytes((folders / "inverted" / "bag").glob("*.png").__next__().read_bytes())
    (empty / "bag").mkdir(parents=True)
    sets = {name: {"OTHER": str(other), "EMPTY": str(empty)}.get(source, source) for name, source in change.items()}
    config = {"data": {**FOLDER, "root": str(folders / "data"), "shift_sets": sets}, "model": {"name": "test_resnet"},
              "grid": {"lr": [0.1]}, "soups": [{"recipe": "uniform"}]}
    with pytest.raises(ConfigError, match=message):
        resolve_config(config, check_model=False)


def test_shift_sets_are_no_rerun_trigger_of_the_data_and_what_depends_on_it(folders):
    """prepare_data's tracked param (and so every fine-tune after it) is the same with or without shift sets."""
    base = {"data": {**FOLDER, "root": str(folders / "data")}, "model": {"name": "test_resnet"}, "grid": {"lr": [0.1]}, "soups": [{"recipe": "uniform"}]}
    shifted = copy.deepcopy(base)
    shifted["data"]["shift_sets"] = {"inverted": str(folders / "inverted"), "corrupted": "corruptions"}
    plain, with_sets = (resolve_config(c, check_model=False) for c in (base, shifted))
    assert with_sets["data"]["shift_sets"] and tracked(plain, "data") == tracked(with_sets, "data")


def _scored(name: str, test: list[int], shift: list[int], kind: str = "run") -> Scored:
    """A model whose argmax is ``test``/``shift`` (two classes)."""
    def logits(predicted):
        return torch.nn.functional.one_hot(torch.tensor(predicted), 2).float() * 3.0
    return Scored(kind, name, "", logits(test), logits(shift))


def test_a_row_pairs_each_split_with_the_best_run_on_the_same_images():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    best = _scored("best", [0, 1, 0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0])  # 6/8 on test, 4/8 shifted
    soup = _scored("soup", [0, 1, 0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 0, 0, 0], "soup")  # 7/8, 6/8
    row = shift_row(soup, best, labels, labels)
    assert row["test_accuracy"] == 7 / 8 and row["shift_accuracy"] == 6 / 8
    assert row["test_acc_diff_pt"] == pytest.approx(12.5) and row["shift_acc_diff_pt"] == pytest.approx(25.0)
    assert row["shift_acc_diff_pt_low"] <= 25.0 <= row["shift_acc_diff_pt_high"]
    itself = shift_row(best, best, labels, labels)
    assert itself["shift_acc_diff_pt"] == itself["shift_acc_diff_pt_low"] == itself["shift_acc_diff_pt_high"] == 0


def test_the_soups_table_gets_each_sets_columns_by_soup_name():
    soups = pd.DataFrame({"soup": ["uniform", "greedy", "greedy"], "repeat": [0, 0, 1]})
    shift = pd.DataFrame({"shift_set": ["a", "a", "a", "b"], "kind": ["run", "soup", "soup", "soup"],
                          "model": ["uniform", "greedy", "uniform", "greedy"],
                          **{f"shift_{c}": [9.0, 1.0, 2.0, 3.0] for c in ("accuracy", "acc_diff_pt", "acc_diff_pt_low",
                                                                          "acc_diff_pt_high", "acc_p_mcnemar")},
                          "shift_wins": [True, False, True, False]})
    joined = with_shift_columns(soups, shift)
    assert len(joined) == 3 and joined.shift_a_accuracy.tolist() == [2.0, 1.0, 1.0]
    assert joined.shift_b_acc_diff_pt.isna().tolist() == [True, False, False]  # a run of the same name is no soup


def _jobs(result) -> dict[str, int]:
    table = (result.stdout + result.stderr).split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.slow
def test_shift_sets_added_to_a_finished_workflow_are_scored_without_retraining(finished, tmp_path):
    """A corrupted copy and a folder of inverted test images beside the smoke workflow: two preparations and two
    scoring jobs, no fine-tune and no soup; every usable run, the ensemble and every soup scored on each, a
    soup's accuracy that of its saved model evaluated here; the soups table, the summary and the figure show them."""
    import timm

    work = tmp_path / "work"
    shutil.copytree(finished[0], work, symlinks=True)
    inverted = tmp_path / "inverted"
    write_folder(inverted, "", *_images("test", 0, 40, invert=True, size=28), [str(i) for i in range(10)], suffix="png")
    config = copy.deepcopy(SMOKE)
    config["data"]["shift_sets"] = {"corrupted": "corruptions", "inverted": str(inverted)}
    planned = snakemake(work, config, "-n", "--quiet", "rules")
    assert planned.returncode == 0, planned.stderr[-3000:]
    jobs = _jobs(planned)
    assert jobs["prepare_shift"] == 2 and jobs["shift_scores"] == 2, jobs
    assert not {"finetune", "init", "prepare_data", "soups", "run_table"} & set(jobs), jobs
    result = snakemake(work, config)
    assert result.returncode == 0, result.stderr[-4000:]

    table = pd.read_parquet(work / "results/metrics/shift.parquet")
    runs = pd.read_parquet(work / "results/metrics/runs.parquet")
    soups = pd.read_parquet(work / "results/metrics/soups.parquet")
    for name in ("corrupted", "inverted"):
        rows = table[table.shift_set == name]
        assert sorted(rows[rows.kind == "run"].model) == sorted(runs[runs.status == "ok"].run_id)
        assert set(rows[rows.kind == "soup"].model) == set(soups.soup) and (rows.kind == "ensemble").sum() == 1
        best = rows[rows.best].iloc[0]
        assert best.shift_acc_diff_pt == 0 and best.test_acc_diff_pt == 0
    inverted_rows = table[table.shift_set == "inverted"].set_index("model")
    data = open_data(str(work / "results/shift/inverted/dataset.safetensors"))
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(work / "results/soups/uniform/model.safetensors"))
    images, labels = data.split("test")
    with torch.no_grad():
        predicted = model.eval()(data.normalise(images)).argmax(1)
    assert inverted_rows.loc["uniform", "shift_accuracy"] == pytest.approx((predicted == labels).float().mean().item())
    assert inverted_rows.loc["uniform", "images"] == 40
    uniform = soups[soups.soup == "uniform"].iloc[0]
    assert uniform.shift_inverted_accuracy == inverted_rows.loc["uniform", "shift_accuracy"]
    assert uniform.test_accuracy == pytest.approx(inverted_rows.loc["uniform", "test_accuracy"])
    assert "Under distribution shift" in (work / "results/summary.txt").read_text()
    assert (work / "results/plots/shift.png").stat().st_size > 10_000
