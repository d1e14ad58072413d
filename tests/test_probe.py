"""The linear probe of the init's head (LP-FT): it finds the logistic-regression optimum, reads train images
only, changes nothing but the head, and makes real ImageNet weights' init predict the classes; a value
that is not a boolean is rejected (tests/test_config.py)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import LITE0_MODEL
from safetensors import safe_open
from safetensors.torch import load_file
from test_batchnorm import SplitSpy

from soupflow.core.evaluate import Evaluator
from soupflow.core.models import model_for
from soupflow.core.probe import accuracy, fit_logistic, linear_probe
from soupflow.jobs.init import InitPaths, make_init
from soupflow.plan.config import merge_defaults
from soupflow.store.data import TensorData


def clusters(n=600, dims=16, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dims, generator=generator) * 3
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, dims, generator=generator), y


def test_the_fit_is_the_regularised_optimum_and_separates_separable_classes():
    x, y = clusters()
    weight, bias = fit_logistic(x, y, 3, weight_decay=1e-3)
    assert accuracy(x, y, (weight, bias)) > 0.97
    params = [weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    loss = F.cross_entropy(x @ params[0].T + params[1], y) + 1e-3 * params[0].square().sum()
    gradients = torch.autograd.grad(loss, params)
    assert max(float(g.abs().max()) for g in gradients) < 1e-4  # stationary: the convex problem's minimum
    stronger, _ = fit_logistic(x, y, 3, weight_decay=1e-1)
    assert stronger.norm() < weight.norm()  # the L2 strength is applied


@pytest.fixture(scope="module")
def inits(tmp_path_factory, fashion):
    """The Lite0 init with a random head and with a probed one (same seed otherwise)."""
    folder = tmp_path_factory.mktemp("probe")
    made = {}
    for name, probe in (("random", False), ("probe", True)):
        config = merge_defaults({"model": {**LITE0_MODEL, "linear_probe": probe}})
        made[name] = str(folder / f"{name}.safetensors")
        make_init(config, InitPaths(fashion, made[name], {}))
    return made


def test_only_the_head_changes_and_the_init_then_predicts_the_classes(inits, fashion):
    random, probed = load_file(inits["random"]), load_file(inits["probe"])
    changed = {key for key in random if not torch.equal(random[key], probed[key])}
    assert changed == {"classifier.weight", "classifier.bias"}
    data = TensorData(fashion)
    evaluator = Evaluator(model_for(data, LITE0_MODEL), data, "val", torch.device("cpu"))
    before, after = evaluator.scores(random).accuracy, evaluator.scores(probed).accuracy
    assert before < 0.3 and after > 0.5, (before, after)  # 10 classes: a random head is near chance
    with safe_open(inits["probe"], framework="pt") as handle:
        meta = handle.metadata()
    assert float(meta["probe_weight_decay"]) in (1e-4, 1e-3, 1e-2, 1e-1) and meta["probe_images"] == "1500"


def test_the_probe_reads_train_images_only(fashion):
    data = SplitSpy(fashion)
    model = model_for(data, {"name": "resnet10t", "kwargs": {"channels": [8, 8, 8, 8], "stem_width": 8}})
    result = linear_probe(model, data, torch.device("cpu"), seed=0)
    assert data.read == ["train"] and result.images == 1500

