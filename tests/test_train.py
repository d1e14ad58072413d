import pytest
import torch

from soupflow.core.train import AUGMENTATIONS, TensorSource, lr_factor, random_flip, random_shift, train
from soupflow.plan.catalog import Hyperparameters


def test_flip_mirrors_some_images_and_keeps_the_rest():
    images = torch.arange(2 * 1 * 3 * 4, dtype=torch.uint8).reshape(2, 1, 3, 4).repeat(50, 1, 1, 1)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    same = (out == images).flatten(1).all(1)
    assert (flipped | same).all() and flipped.any() and same.any()


def test_shift_translates_each_image_within_the_pad():
    image = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    image[0, 0, 4, 4] = 255
    out = random_shift(image.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0), pad=2)
    assert out.shape == (64, 1, 8, 8) and out.dtype == torch.uint8
    positions = {tuple(torch.nonzero(o[0])[0].tolist()) for o in out}
    assert len(positions) > 5
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in positions)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_augmentations_keep_shape_and_dtype(name):
    images = torch.randint(0, 255, (16, 3, 10, 10), dtype=torch.uint8)
    out = AUGMENTATIONS[name](images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8


def test_one_cycle_warms_up_then_anneals_to_zero():
    factors = [lr_factor(s, 100, "onecycle", 0.3) for s in range(101)]
    assert factors[0] < factors[30] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(factors[30:], factors[31:]))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


class FakeData:
    num_classes = 4

    def normalise(self, images):
        return images.float() / 255.0


def test_training_reduces_the_loss_and_is_deterministic():
    images = torch.randint(0, 255, (256, 1, 4, 4), dtype=torch.uint8)
    labels = (images.flatten(1).float().mean(1) > 127).long()
    hp = {"lr": 0.5, "weight_decay": 0.0, "epochs": 5, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9,
          "seed": 3, "schedule": "onecycle", "augmentation": "none"}
    results, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = Tiny()
        results.append(train(model, TensorSource.of(images, labels, hp), FakeData(), hp, torch.device("cpu")))
        weights.append(model.state_dict()["net.1.weight"].clone())
    assert results[0].status == "ok"
    assert results[0].epoch_losses[-1] < results[0].epoch_losses[0]
    assert torch.equal(weights[0], weights[1])


def test_a_diverging_run_stops_with_status_diverged():
    images = torch.randint(0, 255, (128, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 4, (128,))
    hp = {"lr": 1e38, "weight_decay": 0.0, "epochs": 3, "batch_size": 16, "optimizer": "sgd", "momentum": 0.99,
          "seed": 0, "schedule": "constant"}
    result = train(Tiny(), TensorSource.of(images, labels, hp), FakeData(), hp, torch.device("cpu"), log_every=1)
    assert result.status == "diverged" and result.epochs_done < 3


class TinyBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                       torch.nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("statistics", ["frozen", "update"])
def test_frozen_batchnorm_statistics_stay_those_of_the_init_while_its_affine_trains(statistics):
    images = torch.randint(0, 255, (128, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 4, (128,))
    hp = {"lr": 0.1, "weight_decay": 0.0, "epochs": 2, "batch_size": 16, "optimizer": "sgd", "momentum": 0.9,
          "seed": 0, "schedule": "constant", "bn_statistics": statistics}
    model = TinyBN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, TensorSource.of(images, labels, hp), FakeData(), hp, torch.device("cpu"))
    after = model.state_dict()
    assert not torch.equal(after["net.1.weight"], before["net.1.weight"])  # the affine scale trains either way
    kept = [torch.equal(after[f"net.1.{k}"], before[f"net.1.{k}"]) for k in ("running_mean", "running_var")]
    assert all(kept) if statistics == "frozen" else not any(kept)


def test_the_history_has_one_row_per_epoch_with_the_schedules_learning_rate():
    images = torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 4, (64,))
    hp = {"lr": 0.2, "weight_decay": 0.0, "epochs": 3, "batch_size": 16, "optimizer": "sgd", "momentum": 0.9,
          "seed": 0, "schedule": "onecycle", "warmup_fraction": 0.3}
    result = train(Tiny(), TensorSource.of(images, labels, hp), FakeData(), hp, torch.device("cpu"))
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert [row["train_loss"] for row in result.history] == result.epoch_losses
    # the lr of each epoch's last step (4 steps an epoch): warm-up peak after 30 %, annealed towards 0
    assert [row["lr"] for row in result.history] == pytest.approx([0.2 * lr_factor(s, 12, "onecycle", 0.3)
                                                                   for s in (3, 7, 11)])
    assert result.history[-1]["lr"] < 0.01 < result.history[0]["lr"]
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(result.history, result.history[1:]))


def test_what_on_epoch_end_returns_is_the_epochs_val_accuracy_and_scoring_changes_no_weight():
    """The fine-tune's ``on_epoch_end`` scores the model (eval mode, RNG draws of a DataLoader): the history
    records the number, and training goes on in training mode with the RNG as it was; its time is not
    training time."""
    import time

    images = torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 4, (64,))
    hp = {"lr": 0.2, "weight_decay": 0.0, "epochs": 3, "batch_size": 16, "optimizer": "sgd", "momentum": 0.9,
          "seed": 0, "schedule": "onecycle", "warmup_fraction": 0.3}

    def score(epoch, model):
        model.eval()
        torch.rand(5)  # as a DataLoader iterator drawing its seed
        time.sleep(0.5)
        return None if epoch == 3 else epoch / 10

    weights, histories = [], []
    for on_epoch_end in (None, score):
        torch.manual_seed(0)
        model = Tiny()
        result = train(model, TensorSource.of(images, labels, hp), FakeData(), hp, torch.device("cpu"),
                       on_epoch_end=on_epoch_end)
        weights.append(model.state_dict())
        histories.append([row["val_accuracy"] for row in result.history])
        assert model.training
        assert result.seconds < 0.5 and result.history[-1]["seconds"] < 0.5
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert histories[1][:2] == [0.1, 0.2] and histories[1][2] != histories[1][2]  # None: nan
    assert all(v != v for v in histories[0])


def test_batch_mixing_trains_on_mixed_batches_and_zero_is_off():
    """mixup / cutmix α = 0 and random_erase 0 are the plain loop exactly; each one on trains on something else
    (other weights), reproducibly (their draws are seeded by the step)."""
    torch.manual_seed(0)
    images = torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 4, (64,))
    hp = {"lr": 0.1, "weight_decay": 0.0, "epochs": 2, "batch_size": 16, "optimizer": "sgd", "momentum": 0.9,
          "seed": 0, "schedule": "constant"}

    def weights(extra):
        torch.manual_seed(0)
        model = Tiny()
        train(model, TensorSource.of(images, labels, hp), FakeData(), hp | extra, torch.device("cpu"))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = weights({})
    for off in ({"mixup": 0.0}, {"mixup": None}, {"cutmix": 0.0}, {"random_erase": 0.0}):
        assert torch.equal(weights(off), plain), off
    for on in ({"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}, {"random_erase": 0.5}):
        changed = weights(on)
        assert not torch.allclose(changed, plain) and torch.equal(weights(on), changed), on


def test_mixup_targets_are_soft_label_mixtures_with_the_smoothing_inside():
    from soupflow.core.train import BatchMixing

    images, labels = torch.randn(8, 1, 4, 4), torch.arange(8) % 4
    mixing = BatchMixing.create(Hyperparameters(mixup=0.4, label_smoothing=0.1, seed=2), FakeData(), torch.device("cpu"))
    mixed, targets = mixing(images.clone(), labels, step=5)  # timm mixes in place
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
    assert targets.min() >= 0.1 / 4 - 1e-6  # smoothing: no class at zero
    lam = float(targets[0, labels[0]] - 0.1 / 4) / 0.9 if labels[0] != labels[-1] else None
    assert lam is None or torch.allclose(mixed[0], lam * images[0] + (1 - lam) * images[-1], atol=1e-5)  # its mirror
    again = mixing(images.clone(), labels, step=5)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)  # seeded by the step
    assert not torch.equal(mixing(images.clone(), labels, step=6)[0], mixed)
