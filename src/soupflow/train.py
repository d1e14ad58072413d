"""The training loop shared by pretraining and fine-tuning.

Data is a pair of in-memory uint8 tensors; each step slices a batch, augments the whole batch at once
(on the batch's device) and normalises it. No per-sample Python runs in the loop.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from soupflow.data import PreparedData

log = logging.getLogger("soupflow")


# ---------------------------------------------------------------- augmentation on whole batches
def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    flip = torch.rand(images.shape[0], generator=generator).to(images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def random_shift(images: torch.Tensor, generator: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels (zero padding + a random crop per image)."""
    n, _, h, w = images.shape
    pad = pad if pad is not None else max(1, h // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # n, h, 1
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # n, 1, w
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "none": lambda images, generator: images,
    "flip": random_flip,
    "shift": random_shift,
    "flip_shift": lambda images, generator: random_shift(random_flip(images, generator), generator),
}


# ---------------------------------------------------------------- optimiser and schedule
def make_optimizer(model: torch.nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
    if hp["optimizer"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    momentum = hp.get("momentum", 0.9)
    return torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=momentum, weight_decay=hp["weight_decay"],
                           nesterov=bool(hp.get("nesterov", False)) and momentum > 0)


def lr_factor(step: int, total: int, schedule: str, warmup_fraction: float) -> float:
    """Learning-rate multiplier at ``step``: one-cycle (linear warm-up, cosine down), cosine or constant."""
    if schedule == "constant":
        return 1.0
    warmup = int(total * warmup_fraction) if schedule == "onecycle" else 0
    if step < warmup:
        return 0.04 + 0.96 * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    status: str  # ok | diverged
    epochs_done: int
    steps: int
    seconds: float
    images_per_second: float
    train_loss: float
    epoch_losses: list[float] = field(default_factory=list)


def train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, data: PreparedData,
          hp: dict[str, Any], device: torch.device, name: str = "train",
          on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None,
          log_every: int = 50) -> TrainResult:
    """Train ``model`` in place on ``images``/``labels`` (uint8 NCHW / int64) with hyperparameters ``hp``.

    Stops early with status ``diverged`` as soon as the loss is not finite. ``on_epoch_end(epoch, model)``
    is called after each finished epoch (checkpoints of the pretraining trajectory).
    """
    generator = torch.Generator().manual_seed(int(hp.get("seed", 0)))
    torch.manual_seed(int(hp.get("seed", 0)))
    augment = AUGMENTATIONS[hp.get("augmentation", "none")]
    model.to(device).train()
    optimizer = make_optimizer(model, hp)
    n, batch_size = labels.shape[0], int(hp["batch_size"])
    steps_per_epoch = max(1, n // batch_size)  # drop the ragged last batch: stable BatchNorm statistics
    total = steps_per_epoch * int(hp["epochs"])
    warmup = float(hp.get("warmup_fraction", 0.3))
    images, labels = images.to(device), labels.to(device)
    smoothing = float(hp.get("label_smoothing", 0.0))
    step, start, epoch_losses = 0, time.perf_counter(), []
    for epoch in range(int(hp["epochs"])):
        order = torch.randperm(n, generator=generator).to(device)
        running = torch.zeros((), device=device)
        for index in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = hp["lr"] * lr_factor(step, total, hp.get("schedule", "onecycle"), warmup)
            batch = order[index * batch_size:(index + 1) * batch_size]
            inputs = data.normalise(augment(images[batch], generator))
            loss = F.cross_entropy(model(inputs), labels[batch], label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()
            step += 1
            if (index + 1) % log_every == 0 or index + 1 == steps_per_epoch:
                mean_loss = float(running) / (index + 1)
                elapsed = time.perf_counter() - start
                log.info("%s epoch %d/%d step %d/%d loss %.4f lr %.2e %.0f img/s", name, epoch + 1,
                         hp["epochs"], index + 1, steps_per_epoch, mean_loss, optimizer.param_groups[0]["lr"],
                         step * batch_size / max(elapsed, 1e-9))
                if not math.isfinite(mean_loss):
                    log.warning("%s diverged at epoch %d step %d (loss %s)", name, epoch + 1, index + 1, mean_loss)
                    return _result("diverged", epoch, step, start, batch_size, mean_loss, epoch_losses)
        epoch_losses.append(float(running) / steps_per_epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
    return _result("ok", int(hp["epochs"]), step, start, batch_size, epoch_losses[-1], epoch_losses)


def _result(status, epochs_done, steps, start, batch_size, loss, epoch_losses) -> TrainResult:
    seconds = time.perf_counter() - start
    return TrainResult(status, epochs_done, steps, seconds, steps * batch_size / max(seconds, 1e-9), loss, epoch_losses)
