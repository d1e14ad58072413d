"""Training writes its scalars as TensorBoard event files that TensorBoard's own reader reads back, and skips
them quietly without the tensorboard package. (A fine-tune's own: tests/test_ema.py.)"""

import logging

import pytest
import torch

from soupflow.core import board as board_module
from soupflow.core.train import TensorSource, train

HP = {"lr": 0.05, "weight_decay": 1e-4, "epochs": 2, "batch_size": 8, "optimizer": "sgd", "momentum": 0.9,
      "nesterov": True, "seed": 3, "schedule": "onecycle", "augmentation": "none"}


class Data:
    def normalise(self, images):
        return images.float() / 255.0


def tiny_training(folder, log_every=2):
    """2 epochs of 5 steps of a tiny net; each epoch's 'val accuracy' is 0.25 times its number."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 6, 6), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 3, (40,), generator=generator)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    return train(model, TensorSource.of(images, labels, HP), Data(), HP, torch.device("cpu"), log_every=log_every,
                 on_epoch_end=lambda epoch, model: 0.25 * epoch, tensorboard=str(folder))


def read(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_reads_back_the_loops_scalars_by_step(tmp_path):
    result = tiny_training(tmp_path / "tb")
    scalars = read(tmp_path / "tb")
    assert set(scalars) == {"train/loss", "train/lr", "train/images_per_second", "val/accuracy"}
    # progress lines every 2 steps and at each epoch's last step (5 steps an epoch)
    for tag in ("train/loss", "train/lr", "train/images_per_second"):
        assert [step for step, _ in scalars[tag]] == [2, 4, 5, 7, 9, 10], tag
    assert scalars["val/accuracy"] == [(5, 0.25), (10, 0.5)]
    assert scalars["train/loss"][2][1] == pytest.approx(result.epoch_losses[0], rel=1e-5)  # the epoch's mean loss
    assert all(value > 0 for _, value in scalars["train/images_per_second"])


def test_a_fresh_start_replaces_what_an_earlier_attempt_wrote(tmp_path):
    tiny_training(tmp_path / "tb")
    tiny_training(tmp_path / "tb")
    assert [step for step, _ in read(tmp_path / "tb")["train/loss"]] == [2, 4, 5, 7, 9, 10]


def test_without_tensorboard_training_goes_on_and_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(board_module, "_summary_writer", lambda: None)
    with caplog.at_level(logging.INFO, logger="soupflow"):
        result = tiny_training(tmp_path / "tb")
    assert result.status == "ok" and not (tmp_path / "tb").exists()
    assert caplog.text.count("tensorboard package is not installed") == 1
