"""The shared init: from a local file (head re-created when it does not fit), and timm's hub offline."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from soupflow.core.models import create_model
from soupflow.jobs.init import InitPaths, make_init
from soupflow.plan.config import merge_defaults
from soupflow.store.datasets import prepare


@pytest.fixture
def data_path(tmp_path):
    from test_data import write_tiny_idx_dataset

    write_tiny_idx_dataset(tmp_path, n_train=120, n_test=20)
    config = {"name": "fashion_mnist", "root": str(tmp_path), "pretrain_fraction": 0.5, "val_fraction": 0.2}
    prepare(config, 0, str(tmp_path / "data.safetensors"), str(tmp_path / "splits.json"))
    return str(tmp_path / "data.safetensors")


def test_init_from_a_file_keeps_its_body_and_recreates_a_head_of_another_size(tmp_path, data_path):
    source = create_model({"name": "test_resnet"}, num_classes=7, in_chans=1).state_dict()
    save_file(source, str(tmp_path / "other.safetensors"))
    config = merge_defaults({"model": {"name": "test_resnet", "init": "file", "file": str(tmp_path / "other.safetensors")}})
    make_init(config, InitPaths(data_path, str(tmp_path / "init.safetensors"), {0: str(tmp_path / "e0.safetensors")}))
    init = load_file(str(tmp_path / "init.safetensors"))
    head = [k for k in source if source[k].shape != init[k].shape]
    assert head and all(init[k].shape[0] == 10 for k in head)
    body = [k for k in source if k not in head and source[k].is_floating_point()]
    assert all(torch.equal(source[k], init[k]) for k in body)
    assert torch.equal(load_file(str(tmp_path / "e0.safetensors"))[body[0]], init[body[0]])


def test_timm_hub_weights_offline_fail_with_one_clear_message(tmp_path, data_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail fast instead of waiting on network time-outs
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    config = merge_defaults({"model": {"name": "resnet10t", "init": "timm"}})
    with pytest.raises(RuntimeError, match="needs network access"):
        make_init(config, InitPaths(data_path, str(tmp_path / "init.safetensors"), {}))
    assert not (tmp_path / "init.safetensors").exists()


def test_timm_init_reads_only_the_weights_the_local_rule_fetched(tmp_path, data_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a compute node without network
    name = "test_resnet.r160_in1k"
    fetched = create_model({"name": name}, num_classes=1000, in_chans=3).state_dict()
    save_file(fetched, str(tmp_path / "fetched.safetensors"))
    config = merge_defaults({"model": {"name": name, "init": "timm"}})
    make_init(config, InitPaths(data_path, str(tmp_path / "init.safetensors"), {},
                                pretrained=str(tmp_path / "fetched.safetensors")))
    init = load_file(str(tmp_path / "init.safetensors"))
    body = [k for k in init if k.startswith("layer") and init[k].is_floating_point()]
    assert body and all(torch.equal(init[k], fetched[k]) for k in body)
    assert init["conv1.0.weight"].shape[1] == 1  # timm adapted the stem to grey images, and the head to 10 classes
    assert init["fc.weight"].shape[0] == 10


def test_rotation_pretext_turns_every_image_four_ways_and_labels_the_turn():
    from soupflow.core.pretext import rotation_task

    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.uint8).reshape(2, 1, 3, 3)
    turned, targets = rotation_task(images, torch.tensor([7, 8]))
    assert turned.shape == (8, 1, 3, 3) and targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(turned[:2], images) and torch.equal(turned[2], images[0].rot90(1, dims=(-2, -1)))
    assert torch.equal(turned[4:6], images.flip(-1).flip(-2))


def test_rotation_pretraining_hands_fine_tunes_a_fresh_seeded_head(tmp_path, data_path):
    from soupflow.core.pretext import fresh_head

    config = merge_defaults({"model": {"name": "test_resnet", "head_seed": 3},
                             "pretrain": {"epochs": 1, "task": "rotation", "batch_size": 16}})
    paths = {0: str(tmp_path / "e0.safetensors"), 1: str(tmp_path / "e1.safetensors")}
    make_init(config, InitPaths(data_path, str(tmp_path / "init.safetensors"), paths))
    init, first = load_file(str(tmp_path / "init.safetensors")), load_file(paths[1])
    head = fresh_head(create_model({"name": "test_resnet"}, num_classes=10, in_chans=1), 3)
    assert head and all(torch.equal(init[k], v) and torch.equal(first[k], v) for k, v in head.items())
    body = next(k for k in init if k.endswith("conv1.weight"))
    assert not torch.equal(init[body], load_file(paths[0])[body])  # the body did train


def test_model_kwargs_timm_rejects_fail_naming_the_key():
    with pytest.raises(TypeError, match=r"config key 'model.kwargs' \{'bogus_width': 3\} does not fit timm's 'resnet10t'"):
        create_model({"name": "resnet10t", "kwargs": {"bogus_width": 3}}, num_classes=10, in_chans=1)


def test_pretraining_on_other_classes_hands_fine_tunes_a_seeded_head_of_the_target_classes(tmp_path):
    from test_data import write_tiny_idx_dataset

    write_tiny_idx_dataset(tmp_path, n_train=120, n_test=20)
    data = {"name": "fashion_mnist", "root": str(tmp_path), "pretrain_fraction": 0.0, "val_fraction": 0.25,
            "pretrain_classes": [1, 3, 5, 7], "finetune_classes": [0, 2, 4], "labels_per_class": 4}
    config = merge_defaults({"data": data, "model": {"name": "test_resnet", "head_seed": 3},
                             "pretrain": {"epochs": 1, "batch_size": 16}})
    prepare(config["data"], 0, str(tmp_path / "data.safetensors"), str(tmp_path / "splits.json"))
    paths = {0: str(tmp_path / "e0.safetensors"), 1: str(tmp_path / "e1.safetensors")}
    make_init(config, InitPaths(str(tmp_path / "data.safetensors"), str(tmp_path / "init.safetensors"), paths))
    init, before, first = (load_file(str(tmp_path / "init.safetensors")), load_file(paths[0]), load_file(paths[1]))
    torch.manual_seed(3)
    fresh = create_model({"name": "test_resnet"}, num_classes=3, in_chans=1).state_dict()
    head = [k for k in init if k.startswith(("fc.", "head.")) or init[k].shape[:1] == (3,)]
    assert head and all(init[k].shape[0] == 3 and torch.equal(init[k], fresh[k]) for k in head)
    assert all(torch.equal(first[k], init[k]) for k in head)  # kept epochs carry the same head
    body = next(k for k in init if k.endswith("conv1.weight"))
    assert not torch.equal(init[body], before[body])  # the body did pretrain (on 4 classes, with a 4-class head)


def test_a_shared_fine_tune_is_a_fine_tune_of_the_pretrained_init_that_the_runs_start_from(tmp_path, data_path):
    from soupflow.core.models import model_for
    from soupflow.core.train import fine_tuning_source, train
    from soupflow.plan.seeds import pipeline_seed
    from soupflow.store.data import TensorData

    written = {"model": {"name": "test_resnet"}, "pretrain": {"epochs": 1, "batch_size": 16},
               "finetune": {"batch_size": 16, "label_smoothing": 0.1}}
    plain = merge_defaults(written)
    shared = merge_defaults({**written, "model": {"name": "test_resnet", "shared_finetune": {"epochs": 2, "lr": 0.03}}})
    make_init(plain, InitPaths(data_path, str(tmp_path / "plain.safetensors"), {}))
    make_init(shared, InitPaths(data_path, str(tmp_path / "shared.safetensors"), {}))
    # by hand: the pretrained init trained 2 epochs at lr 0.03 with the finetune section's other settings
    data = TensorData(data_path)
    model = model_for(data, plain["model"])
    model.load_state_dict(load_file(str(tmp_path / "plain.safetensors")))
    hp = {**plain["finetune"], "epochs": 2, "lr": 0.03, "seed": pipeline_seed(plain, 0)}
    assert train(model, fine_tuning_source(data, hp), data, hp, torch.device("cpu")).status == "ok"
    expected, got = model.state_dict(), load_file(str(tmp_path / "shared.safetensors"))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    body = next(k for k in got if k.endswith("conv1.weight"))
    assert not torch.equal(got[body], load_file(str(tmp_path / "plain.safetensors"))[body])
    assert not (tmp_path / "resume_shared.pt").exists()  # the transient training state is gone
