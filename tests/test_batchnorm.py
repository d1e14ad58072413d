"""BatchNorm re-estimation: scrambled statistics come back as those of the train images, and only train
images are ever read."""

import pytest
import torch
from test_data import write_tiny_idx_dataset

from soupflow.core.batchnorm import BatchNormRefresher, sample_images
from soupflow.store.data import TensorData
from soupflow.store.datasets import prepare


class SplitSpy(TensorData):
    """Prepared data that records which splits' images were read (every read of images goes through split)."""

    def __init__(self, path):
        super().__init__(path)
        self.read: list[str] = []

    def split(self, name, device="cpu"):
        self.read.append(name)
        return super().split(name, device)



@pytest.fixture
def data(tmp_path):
    (tmp_path / "idx").mkdir()
    root = write_tiny_idx_dataset(tmp_path / "idx", n_train=400, n_test=50)
    prepare({"name": "mnist", "root": str(root), "pretrain_fraction": 0.25, "val_fraction": 0.25},
            0, str(tmp_path / "data.safetensors"), str(tmp_path / "splits.json"))
    return SplitSpy(tmp_path / "data.safetensors")


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten())


def test_scrambled_statistics_return_to_those_of_the_train_sample(data):
    model = small_model()
    refresher = BatchNormRefresher(model, data, torch.device("cpu"), count=150, seed=0, batch_size=150)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scrambled = dict(state)
    for name in ("1.running_mean", "1.running_var", "4.running_mean", "4.running_var"):
        scrambled[name] = torch.rand_like(state[name]) * 50
    fresh = refresher.refresh(scrambled)
    # the first layer's statistics are the per-channel moments of the first convolution over the sample
    with torch.no_grad():
        inputs = data.normalise(sample_images(data, 150, seed=0))
        conv = torch.nn.functional.conv2d(inputs, state["0.weight"], state["0.bias"])
    torch.testing.assert_close(fresh["1.running_mean"], conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fresh["1.running_var"], conv.transpose(0, 1).reshape(4, -1).var(dim=1),
                               rtol=1e-4, atol=1e-5)
    # weights untouched; statistics independent of the scrambled values they replaced
    assert torch.equal(fresh["0.weight"], state["0.weight"]) and torch.equal(fresh["4.weight"], state["4.weight"])
    again = refresher.refresh({k: v.clone() for k, v in state.items()})
    for name in ("1.running_mean", "1.running_var", "4.running_mean", "4.running_var"):
        torch.testing.assert_close(fresh[name], again[name])


def test_only_train_images_are_read_and_the_sample_is_seeded(data):
    BatchNormRefresher(small_model(), data, torch.device("cpu"), count=100, seed=1).refresh(small_model().state_dict())
    assert set(data.read) == {"train"}
    assert torch.equal(sample_images(data, 50, seed=3), sample_images(data, 50, seed=3))
    assert not torch.equal(sample_images(data, 50, seed=3), sample_images(data, 50, seed=4))
    assert sample_images(data, 10_000, seed=0).shape[0] == data.split("train")[0].shape[0]  # capped at the split


@pytest.mark.parametrize("name, folds", [("resnet10t", True), ("test_resnet", True),
                                         ("tf_efficientnet_lite0", False)])  # timm's BatchNormAct2d: fx cannot trace it
def test_scoring_folds_batchnorm_into_convolutions_and_gives_the_same_logits(name, folds):
    from soupflow.core.models import create_model, inference_model

    torch.manual_seed(0)
    model = create_model({"name": name}, num_classes=5, in_chans=3).eval()
    for module in model.modules():  # statistics of a trained model, not the fresh 0 / 1
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    folded = inference_model(model)
    assert (folded is not model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())) == folds
    images = torch.randn(8, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(folded(images), model(images), atol=1e-4, rtol=1e-4)
    assert inference_model(model.train()) is model  # training mode: batch statistics, nothing to fold


@pytest.mark.parametrize("name", ["resnet10t", "test_resnet", "tf_efficientnet_lite0"])
def test_a_model_traced_once_and_refolded_per_state_scores_as_a_fresh_fold(name):
    from soupflow.core.models import Folded, create_model, inference_model

    def trained(seed):
        torch.manual_seed(seed)
        model = create_model({"name": name}, num_classes=5, in_chans=3).eval()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
        return model

    model, other = trained(0), trained(1)
    folded = Folded(model)
    images = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        model.load_state_dict(other.state_dict())  # a second state into the traced model
        refolded = folded.refresh()(images)
        fresh = inference_model(other)(images)
    assert torch.equal(refolded, fresh)  # the same tensors as a fresh fold, bit for bit
    assert (folded.pairs is not None and len(folded.pairs) > 0) == (name != "tf_efficientnet_lite0")
