"""data.format files: image folders and tar shards listed once, streamed through DataLoader workers and timm's
transforms; the same scores as the tensors path on the same pixels, seeded training transforms, clear errors."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import SMOKE, snakemake

from soupflow.core.evaluate import Evaluator
from soupflow.core.models import create_model
from soupflow.core.train import FileSource
from soupflow.plan.config import resolve_config
from soupflow.plan.errors import ConfigError
from soupflow.store.data import TensorData, load_idx_dataset
from soupflow.store.datasets import open_data, prepare
from soupflow.store.files import FileData, TrainTransform, list_folder
from soupflow.store.image_folders import FASHION_CLASSES, write_folder, write_shards
from soupflow.store.prepared import DataError

FASHION = "/usr/share/datasets/fashion-mnist"
#: lossless 16 px images, so that both formats hold the same pixels
FOLDER = {"name": "image_folder", "image_size": 16, "pretrain_fraction": 0.25, "val_fraction": 0.25,
          "normalize": "dataset"}
FILES = {**FOLDER, "format": "files", "crop_pct": 1.0, "interpolation": "bilinear"}


def fashion(n_train=96, n_test=32):
    raw = load_idx_dataset(FASHION)
    resized = [torch.nn.functional.interpolate(torch.from_numpy(raw[s][0][:n]).float(), size=16, mode="bilinear",
                                               antialias=True).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
               for s, n in (("train", n_train), ("test", n_test))]
    return (resized[0], raw["train"][1][:n_train]), (resized[1], raw["test"][1][:n_test])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for split, (images, labels) in zip(("train", "test"), fashion()):
        write_folder(root, split, images, labels, list(FASHION_CLASSES), suffix="png")
    return root


@pytest.fixture(scope="module")
def both(folder, tmp_path_factory):
    """The same folder prepared as tensors and as files: (TensorData, FileData)."""
    out = tmp_path_factory.mktemp("prepared")
    prepare({**FOLDER, "root": str(folder)}, 0, str(out / "d.safetensors"), str(out / "t.json"))
    prepare({**FILES, "root": str(folder)}, 0, str(out / "d.parquet"), str(out / "f.json"), "test_resnet")
    assert (out / "t.json").read_text() == (out / "f.json").read_text()  # one split, whatever the format
    return TensorData(out / "d.safetensors"), open_data(str(out / "d.parquet"))


def test_the_files_path_reads_and_scores_what_the_tensors_path_does(both):
    tensors, files = both
    assert isinstance(files, FileData) and files.classes == tensors.classes and files.image_shape == (3, 16, 16)
    assert torch.allclose(files.mean, tensors.mean) and torch.allclose(files.std, tensors.std)
    torch.manual_seed(0)
    model = create_model({"name": "test_resnet"}, tensors.num_classes, 3)
    for split in ("pretrain", "train", "val", "test"):
        rows = torch.arange(tensors.labels(split).shape[0])
        assert torch.equal(files.labels(split), tensors.labels(split)), split
        assert torch.equal(files.images(split, rows), tensors.images(split, rows)), split
        logits = [Evaluator(model, data, split, torch.device("cpu"), 10).logits() for data in (tensors, files)]
        assert (logits[0] - logits[1]).abs().max() <= 1e-5, split


@pytest.mark.parametrize("transform", [TrainTransform(hflip=0.5),
                                       TrainTransform(hflip=0.5, crop_scale=0.3, auto_augment="rand-m9-mstd0.5-inc1"),
                                       TrainTransform(auto_augment="augmix-m5-w4-d2")])
def test_the_training_transform_is_seeded_per_image_whatever_the_number_of_workers(both, transform):
    files = both[1]
    order = torch.randperm(48, generator=torch.Generator().manual_seed(1))

    def epoch(workers, number, start=0):
        source = FileSource(FileData.open(files.path, workers), "train", None, transform, seed=5)
        return [images for images, _ in source.epoch(order, start, 8, number, torch.device("cpu"))]

    single, parallel = epoch(0, 0), epoch(2, 0)
    assert len(single) == 6 and all(torch.equal(a, b) for a, b in zip(single, parallel))
    assert all(torch.equal(a, b) for a, b in zip(epoch(2, 0, start=2), single[2:]))  # a resumed epoch goes on
    assert not all(torch.equal(a, b) for a, b in zip(epoch(0, 1), single))  # another epoch, other draws


def test_non_image_files_are_ignored_with_a_count(folder, tmp_path):
    (folder / "train" / "bag" / "notes.txt").write_text("not an image")
    try:
        listing = list_folder(str(folder), "train")
        assert listing.skipped == 1 and not any(path.endswith(".txt") for path in listing.rows["path"])
    finally:
        (folder / "train" / "bag" / "notes.txt").unlink()


def test_a_corrupt_image_fails_naming_it_unless_skipping_is_asked_for(folder, tmp_path):
    root = tmp_path / "damaged"
    for split, (images, labels) in zip(("train", "test"), fashion(40, 10)):
        write_folder(root, split, images, labels, list(FASHION_CLASSES), suffix="png")
    bad = sorted((root / "train").rglob("*.png"))[3]
    bad.write_bytes(b"\x89PNG but not really")
    config = {**FILES, "root": str(root), "pretrain_fraction": 0.0, "val_fraction": 0.2}
    prepare(config, 0, str(tmp_path / "d.parquet"), str(tmp_path / "s.json"), "test_resnet")  # lists, no decoding
    data = FileData.open(str(tmp_path / "d.parquet"))
    everything = torch.cat([data.labels(s) for s in ("train", "val")]).shape[0]
    with pytest.raises(DataError, match=str(bad)):
        for split in ("train", "val"):
            data.images(split, torch.arange(data.labels(split).shape[0]))
    from conftest import finetune_in

    from soupflow.core.models import model_for, save_checkpoint
    from soupflow.plan.config import merge_defaults

    job = merge_defaults({"model": {"name": "test_resnet"}, "data": config})
    save_checkpoint(model_for(data, job["model"]).state_dict(), tmp_path / "init.safetensors")
    hp = {**job["finetune"], "epochs": 1, "batch_size": 8}
    with pytest.raises(DataError, match=str(bad)):  # the job fails naming the file; no run recorded as failed
        finetune_in(job, "run-0000000000", hp, tmp_path / "d.parquet", tmp_path / "init.safetensors", tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.parquet").exists()
    prepare({**config, "skip_corrupt": True}, 0, str(tmp_path / "k.parquet"), str(tmp_path / "k.json"), "test_resnet")
    kept = FileData.open(str(tmp_path / "k.parquet"))
    read = sum(kept.images(s, torch.arange(kept.labels(s).shape[0])).shape[0] for s in ("train", "val"))
    assert read == everything - 1 and kept.skipped == 1


def test_shards_hold_what_the_folder_holds(folder, tmp_path):
    for split, (images, labels) in zip(("train", "test"), fashion()):
        write_shards(tmp_path / "shards", split, images, labels, list(FASHION_CLASSES), suffix="png", shards=3)
    config = {**FILES, "name": "image_shards", "root": str(tmp_path / "shards")}
    prepare(config, 0, str(tmp_path / "s.parquet"), str(tmp_path / "s.json"), "test_resnet")
    prepare({**FILES, "root": str(folder)}, 0, str(tmp_path / "f.parquet"), str(tmp_path / "f.json"), "test_resnet")
    shards, files = FileData.open(str(tmp_path / "s.parquet")), FileData.open(str(tmp_path / "f.parquet"))

    def content(data, split):
        images = data.images(split, torch.arange(data.labels(split).shape[0]))
        return sorted((int(label), image.numpy().tobytes()) for label, image in zip(data.labels(split), images))

    assert shards.classes == files.classes
    assert content(shards, "test") == content(files, "test")  # the official test split: the same images


def test_a_test_class_the_train_split_lacks_is_a_parse_time_error_naming_both(folder, tmp_path):
    import shutil

    shutil.copytree(folder, tmp_path / "extra")
    (tmp_path / "extra" / "test" / "kimono").mkdir()
    config = {**copy.deepcopy(SMOKE), "data": {**FILES, "root": str(tmp_path / "extra")}}
    config["pretrain"]["augmentation"] = "flip"
    with pytest.raises(ConfigError, match=r"data.root.*test.*kimono.*train"):
        resolve_config(config, check_model=False)


@pytest.mark.parametrize("change, key", [
    (lambda c: c["data"].update(name="fashion_mnist", root=FASHION), "data.format"),
    (lambda c: c["data"].update(format="tensors"), "data.crop_pct"),
    (lambda c: c.update(grid={"crop_scale": [0.5]}) or c["data"].update(format="tensors", crop_pct=None,
                                                                          interpolation=None), "grid.crop_scale"),
    (lambda c: c["finetune"].update(auto_augment="rand-m9-foo"), "finetune.auto_augment"),
    (lambda c: c["finetune"].update(augmentation="flip_shift"), "finetune.augmentation"),
    (lambda c: c["finetune"].update(cutmix=1.0, batch_size=31), "finetune.batch_size"),
    (lambda c: c["pretrain"].update(augmentation="flip_shift"), "pretrain.augmentation"),
])
def test_what_a_data_format_cannot_do_is_a_config_error_naming_the_key(folder, change, key):
    config = copy.deepcopy(SMOKE)
    config["data"] = {**FILES, "root": str(folder)}
    config["pretrain"] = {**config["pretrain"], "augmentation": "flip"}
    change(config)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config(config, check_model=False)


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-p0.8-tweights", "augmix-m5-w4-d2-b1",
                                    "original-mstd0.5", "v0r", "3a"])
def test_every_policy_the_parse_accepts_is_one_timm_builds(policy):
    from timm.data import create_transform

    from soupflow.plan.augment import check_auto_augment

    check_auto_augment("finetune.auto_augment", policy)
    create_transform(32, is_training=True, auto_augment=policy)  # raises on a policy it cannot read


def test_timms_strongest_policies_run_with_the_pillow_soupflow_installs():
    """timm posterizes to 0 bits at RandAugment magnitude 10 (and below 2.5 without inc), which Pillow 13 refuses
    (pyproject pins pillow < 13): every image must come through the strongest policies."""
    from PIL import Image
    from timm.data import create_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for policy in ("rand-m10-n3-inc1", "rand-m1-n3", "v0"):
        transform = create_transform(32, is_training=True, auto_augment=policy, use_prefetcher=True)
        for seed in range(40):
            torch.manual_seed(seed), __import__("random").seed(seed), np.random.seed(seed)
            assert transform(image).shape == (3, 32, 32), policy


@pytest.mark.slow
def test_files_workflow_runs_every_soup_and_a_new_image_replans_the_data_and_what_depends_on_it(folder, tmp_path):
    config = copy.deepcopy(SMOKE)
    config["data"] = {**FILES, "root": str(folder), "normalize": "pretrained"}
    config["model"] = {"name": "test_resnet", "init": "pretrain"}
    config["pretrain"] = {**config["pretrain"], "augmentation": "flip", "epochs": 1}
    config["grid"] = {"auto_augment": ["rand-m9-mstd0.5-inc1", "original"], "cutmix": [0.0, 1.0]}
    config["finetune"] = {"epochs": 1, "batch_size": 8, "crop_scale": 0.5, "augmentation": "flip"}
    config.pop("runs")
    config["analysis"] = {**config["analysis"], "branching": {"epochs": [], "perturbations": []}}
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = __import__("pandas").read_parquet(tmp_path / "results/metrics/runs.parquet")
    assert len(runs) == 4 and (runs.status == "ok").all() and (runs.images_skipped == 0).all()
    soups = __import__("pandas").read_parquet(tmp_path / "results/metrics/soups.parquet")
    assert set(soups.soup) == {s.get("name", s["recipe"]) for s in SMOKE["soups"]}
    assert json.loads((tmp_path / "results/data/splits.json").read_text())["val"]
    new = folder / "train" / "bag" / "9999999.png"
    new.write_bytes(sorted((folder / "train" / "bag").glob("*.png"))[0].read_bytes())
    try:
        planned = snakemake(tmp_path, config, "-n")
        assert "prepare_data" in planned.stdout and "finetune" in planned.stdout
    finally:
        new.unlink()


@pytest.mark.slow
def test_a_files_run_stopped_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_one(both, tmp_path):
    """SIGTERM while a DataLoader worker streams seeded training transforms (and mixup draws per step)."""
    import signal

    from safetensors.torch import load_file
    from test_resume import assert_same_weights, run, start, wait_for

    files = both[1].path
    run(tmp_path / "plain.pt", tmp_path / "plain.safetensors", files)
    state, out = tmp_path / "state.pt", tmp_path / "final.safetensors"
    process = start(state, out, files)
    wait_for(state, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and "rerun to resume" in stderr
    resumed = int(run(state, out, files).split("resumed_from_step=")[1])
    # 3 steps an epoch (48 images, batches of 16), the first save at step 3, after the epoch's val-curve pass:
    # the signal lands mid-epoch (4, 5) or, on a slow machine, while that save is being made (3)
    assert resumed in (3, 4, 5)
    assert_same_weights(load_file(str(out)), load_file(str(tmp_path / "plain.safetensors")))


def test_drop_path_rate_trains_with_stochastic_depth_on_the_same_architecture(both, tmp_path):
    from conftest import finetune_in
    from safetensors.torch import load_file

    from soupflow.core.models import model_for, save_checkpoint
    from soupflow.plan.config import merge_defaults

    tensors = both[0]
    config = merge_defaults({"model": {"name": "test_resnet"}})
    torch.manual_seed(0)
    save_checkpoint(model_for(tensors, config["model"]).state_dict(), tmp_path / "init.safetensors")
    weights = {}
    for rate in (None, 0.3):
        hp = {**config["finetune"], "epochs": 2, "batch_size": 8, "drop_path_rate": rate}
        finetune_in(config, f"run-{rate}", hp, tensors.path, tmp_path / "init.safetensors", tmp_path / str(rate))
        weights[rate] = load_file(str(tmp_path / str(rate) / "model.safetensors"))
    assert weights[None].keys() == weights[0.3].keys()  # one architecture: they soup
    assert not all(torch.equal(weights[None][k], weights[0.3][k]) for k in weights[None])


def test_training_workers_feed_a_fine_tunes_dataloader_while_its_compute_threads_stay_the_jobs(both, tmp_path,
                                                                                              monkeypatch):
    from conftest import finetune_in

    from soupflow.core.models import model_for, save_checkpoint
    from soupflow.jobs import finetune as finetune_job
    from soupflow.jobs.context import JobContext
    from soupflow.plan.config import merge_defaults

    files = both[1]
    config = merge_defaults({"model": {"name": "test_resnet"}, "training": {"workers": 2}})
    opened, original = [], JobContext.open.__func__

    def spy(cls, *args, **kwargs):  # the fine-tune's own context
        opened.append(original(cls, *args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(finetune_job.JobContext, "open", classmethod(spy))
    torch.manual_seed(0)
    save_checkpoint(model_for(files, config["model"]).state_dict(), tmp_path / "init.safetensors")
    hp = {**config["finetune"], "epochs": 1, "batch_size": 8}
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        finetune_in(config, "run-workers", hp, files.path, tmp_path / "init.safetensors", tmp_path / "run", threads=1)
        assert torch.get_num_threads() == 1  # the job's threads compute, whatever its workers
    finally:
        torch.set_num_threads(previous)
    assert [context.data._loader.num_workers for context in opened] == [2]
    assert original(JobContext, config, files.path, 1).data._loader.num_workers == 1  # not training: its threads
    unset = merge_defaults({"model": {"name": "test_resnet"}})
    assert original(JobContext, unset, files.path, 1, training=True).data._loader.num_workers == 1  # as before


def test_batches_are_pinned_for_a_cuda_device_only():
    from soupflow.store.files import pin_batches

    assert pin_batches(torch.device("cuda", 1)) and pin_batches(torch.device("cuda"))
    assert not pin_batches(torch.device("cpu"))


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
def test_a_job_on_cuda_asks_its_dataloader_for_pinned_batches(both, monkeypatch):
    """The decision reaches the DataLoader (which pins only where CUDA is: on this CPU it starts all the same)."""
    from soupflow.jobs import context as job_context
    from soupflow.plan.config import merge_defaults

    config = merge_defaults({"model": {"name": "test_resnet"}})
    for device, pinned in ((torch.device("cuda", 0), True), (torch.device("cpu"), False)):
        monkeypatch.setattr(job_context, "pick_device", lambda preference, device=device: device)
        opened = job_context.JobContext.open(config, both[1].path, threads=1)
        assert opened.device == device and opened.data._loader.pin_memory is pinned
