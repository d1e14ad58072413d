"""How many images a scoring batch holds: ``evaluation.batch_size: auto`` sizes it from the images and
``evaluation.memory_mb`` (1,000 for 28 px images, as before), an explicit number wins; BatchNorm re-estimation
keeps its 500 unless auto scores in smaller batches."""

import copy

import pytest
import torch
import yaml
from conftest import ROOT

from soupflow.core.evaluate import ACTIVATION_BYTES
from soupflow.core.models import create_model
from soupflow.jobs.context import JobContext
from soupflow.plan.config import merge_defaults, resolve_config
from soupflow.plan.errors import ConfigError
from soupflow.store.data import TensorData

DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())
CPU = torch.device("cpu")


def images(shape, n=4, seed=0):
    """Random uint8 images of ``shape`` (channels, height, width) in every split, two classes."""
    generator = torch.Generator().manual_seed(seed)
    pair = (torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator),
            torch.randint(0, 2, (n,), generator=generator))
    return TensorData.in_memory({split: pair for split in ("train", "val", "test")}, ["a", "b"],
                                [0.5] * shape[0], [0.25] * shape[0])


def context(evaluation, shape, config=None):
    return JobContext(config or merge_defaults({"evaluation": evaluation}), images(shape), CPU)


def test_the_default_scores_28_px_images_in_batches_of_1000_and_re_estimates_batchnorm_in_500():
    default = resolve_config(copy.deepcopy(DEFAULT), check_paths=False)
    assert default["evaluation"]["batch_size"] == "auto"
    job = context(None, (1, 28, 28), default)
    assert job.scoring_batch_size() == 1000 and job.bn_batch_size() == 500  # what the default ran with before
    assert job.evaluator("val", model=create_model({"name": "test_resnet"}, 2, 1)).batch_size == 1000


def test_224_px_rgb_images_score_in_as_many_as_their_estimated_activations_fit_in_the_budget():
    job = context({}, (3, 224, 224))
    size, per_image = job.scoring_batch_size(), 3 * 224 * 224 * ACTIVATION_BYTES
    assert 1 <= size < 1000
    assert size * per_image <= 1024 * 2**20 < (size + 1) * per_image
    assert job.bn_batch_size() == size  # re-estimation keeps to the budget too
    assert context({"memory_mb": 2048}, (3, 224, 224)).scoring_batch_size() in (2 * size, 2 * size + 1)
    assert context({"memory_mb": 1}, (3, 224, 224)).scoring_batch_size() == 1  # never none


def test_an_explicit_batch_size_wins_and_re_estimation_keeps_its_own():
    job = context({"batch_size": 250, "memory_mb": 1}, (3, 224, 224))
    assert job.scoring_batch_size() == 250 and job.bn_batch_size() == 500


def test_scores_in_auto_batches_are_those_of_one_whole_batch():
    """Scoring is per image (eval mode, BatchNorm folded): a smaller batch changes at most float rounding."""
    torch.manual_seed(0)
    model = create_model({"name": "test_resnet"}, 2, 3)
    data = images((3, 64, 64), n=30)
    small = JobContext(merge_defaults({"evaluation": {"memory_mb": 1}}), data, CPU)
    whole = JobContext(merge_defaults({"evaluation": {"batch_size": 1000}}), data, CPU)
    assert small.scoring_batch_size() < 30 <= whole.scoring_batch_size()
    logits = [job.evaluator("val", model=model).logits() for job in (small, whole)]
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


@pytest.mark.parametrize("value, said", [("big", "'big'"), (0, "0"), (2.5, "2.5")])
def test_a_batch_size_that_is_neither_a_number_nor_auto_is_a_config_error_naming_the_key(value, said):
    config = copy.deepcopy(DEFAULT) | {"evaluation": {"batch_size": value}}
    with pytest.raises(ConfigError, match=rf"config key 'evaluation.batch_size' is {said}"):
        resolve_config(config, check_paths=False)
