"""The training loop shared by pretraining and fine-tuning.

Data is a pair of in-memory uint8 tensors; each step slices a batch, augments the whole batch at once
(on the batch's device) and normalises it. No per-sample Python runs in the loop.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from soupflow.core.models import channels_last, channels_last_input
from soupflow.core.resume import (
    Progress,
    Resume,
    StopRequests,
    fingerprint,
    load_state,
    preempted,
    restore,
    save_state,
)
from soupflow.store.data import PreparedData

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
    status: str  # ok | diverged | failed
    epochs_done: int
    steps: int
    seconds: float
    images_per_second: float
    train_loss: float
    epoch_losses: list[float] = field(default_factory=list)
    resumed_from_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one row per finished epoch (learning curves)


def freeze_batchnorm_statistics(model: torch.nn.Module) -> None:
    """BatchNorm layers normalise with their stored running statistics and stop updating them; their affine
    scale and shift still train (``bn_statistics: frozen``)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """bf16 autocast on CUDA (where it pays off), full fp32 on CPU unless asked."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


@dataclass
class Schedule:
    """The learning rate at every step: ``lr`` times ``lr_factor`` (one-cycle, cosine or constant)."""

    lr: float
    total: int
    kind: str = "onecycle"
    warmup: float = 0.3

    def at(self, step: int) -> float:
        return self.lr * lr_factor(step, self.total, self.kind, self.warmup)


@dataclass
class Loop:
    """What stays fixed while a model trains: the data on its device, the optimiser, the RNG of the data
    order and augmentation, the schedule and the numerics. ``step`` is one optimisation step."""

    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    data: PreparedData
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    schedule: Schedule
    batch_size: int
    steps_per_epoch: int
    epochs: int
    smoothing: float
    bf16: bool
    hp: dict[str, Any]
    mixup: float = 0.0  # mixup's α; 0 = off
    name: str = "train"  # in progress lines
    log_every: int = 50  # steps between progress lines

    @classmethod
    def create(cls, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, data: PreparedData,
               hp: dict[str, Any], device: torch.device, precision: str) -> "Loop":
        """(Seven parameters: the six of ``train``'s task and its numerics, as ``train`` receives them.)"""
        generator = torch.Generator().manual_seed(int(hp.get("seed", 0)))
        torch.manual_seed(int(hp.get("seed", 0)))
        channels_last(model.to(device)).train()
        if hp.get("bn_statistics") == "frozen":
            freeze_batchnorm_statistics(model)
        batch_size = int(hp["batch_size"])
        steps_per_epoch = max(1, labels.shape[0] // batch_size)  # drop the ragged last batch: stable BatchNorm
        schedule = Schedule(hp["lr"], steps_per_epoch * int(hp["epochs"]), hp.get("schedule", "onecycle"),
                            float(hp.get("warmup_fraction", 0.3)))
        return cls(model, images.to(device), labels.to(device), data, make_optimizer(model, hp), generator,
                   AUGMENTATIONS[hp.get("augmentation", "none")], schedule, batch_size, steps_per_epoch,
                   int(hp["epochs"]), float(hp.get("label_smoothing", 0.0)), use_bf16(device, precision), hp,
                   float(hp.get("mixup") or 0.0))

    def step(self, order: torch.Tensor, index: int, step: int) -> torch.Tensor:
        """One optimisation step on the ``index``-th batch of ``order``; the loss, detached, on the device."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.at(step)
        batch = order[index * self.batch_size:(index + 1) * self.batch_size]
        inputs = channels_last_input(self.data.normalise(self.augment(self.images[batch], self.generator)))
        targets, mixed = self.labels[batch], None
        if self.mixup > 0:  # λ from torch's global RNG and the partner order from the loop's: both resumable
            weight = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
            partner = torch.randperm(inputs.shape[0], generator=self.generator).to(inputs.device)
            inputs, mixed = weight * inputs + (1 - weight) * inputs[partner], (weight, targets[partner])
        with torch.autocast(self.images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            outputs = self.model(inputs)
            loss = F.cross_entropy(outputs, targets, label_smoothing=self.smoothing)
            if mixed is not None:
                loss = mixed[0] * loss + (1 - mixed[0]) * F.cross_entropy(outputs, mixed[1],
                                                                          label_smoothing=self.smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


@dataclass
class Saver:
    """Saves a loop's state where ``resume`` says (periodically, at epoch ends, on a stop request)."""

    resume: Resume | None
    key: str
    loop: Loop

    def restore(self, name: str) -> Progress:
        saved = load_state(self.resume.path, self.key, self.loop.images.device) if self.resume else None
        if saved is None:
            return Progress()
        progress = restore(saved, self.loop.model, self.loop.optimizer, self.loop.generator)
        log.info("%s resumes at epoch %d step %d/%d from %s", name, progress.epoch + 1, progress.index,
                 self.loop.steps_per_epoch, self.resume.path)
        return progress

    def save(self, progress: Progress) -> None:
        if self.resume:
            save_state(self.resume.path, self.key, self.loop.model, self.loop.optimizer, self.loop.generator,
                       progress)

    def due(self, step: int) -> bool:
        return bool(self.resume and self.resume.every_steps and step % self.resume.every_steps == 0)


@dataclass
class Clock:
    """Wall seconds of training, kills excluded: a resumed loop starts at the seconds it had saved."""

    start: float
    saved: float  # seconds of earlier attempts (0 when the loop started fresh)
    resumed_from: int  # step the loop resumed at

    @classmethod
    def resuming(cls, progress: Progress) -> "Clock":
        return cls(time.perf_counter() - progress.seconds, progress.seconds, progress.step)

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, data: PreparedData,
          hp: dict[str, Any], device: torch.device, name: str = "train",
          on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None,
          log_every: int = 50, resume: Resume | None = None, precision: str = "auto") -> TrainResult:
    """Train ``model`` in place on ``images``/``labels`` (uint8 NCHW / int64) with hyperparameters ``hp``.

    Stops early with status ``diverged`` as soon as the loss is not finite. ``on_epoch_end(epoch, model)``
    is called after each finished epoch. With ``resume``, the full state is saved at epoch ends (and every
    ``resume.every_steps`` steps, and on SIGTERM/SIGUSR1), and a rerun continues from it: with the same seed
    the final weights equal those of an uninterrupted run (on CPU).
    (Eleven parameters: the six of the task, then five options that callers name or leave out.)
    """
    loop = replace(Loop.create(model, images, labels, data, hp, device, precision), name=name, log_every=log_every)
    saver = Saver(resume, fingerprint(hp, labels.shape[0], resume.start if resume else ""), loop)
    progress = saver.restore(name)
    clock = Clock.resuming(progress)
    with StopRequests() as stop:
        for epoch in range(progress.epoch, loop.epochs):
            diverged = _run_epoch(loop, progress, clock, saver, stop)
            if diverged is not None:
                return _result(loop, progress, clock, "diverged", epoch, diverged)
            progress.epoch_losses.append(progress.running / loop.steps_per_epoch)
            progress.epoch_ends.append(clock.seconds())
            progress.epoch, progress.index, progress.order, progress.running = epoch + 1, 0, None, 0.0
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, model)
            progress.seconds = clock.seconds()
            saver.save(progress)
            if stop.requested:
                raise preempted(name, stop, progress.step, resume)
    return _result(loop, progress, clock, "ok", loop.epochs, progress.epoch_losses[-1])


def _run_epoch(loop: Loop, progress: Progress, clock: Clock, saver: Saver, stop: StopRequests) -> float | None:
    """The steps of one epoch from ``progress.index`` on; the mean loss if it stopped being finite, else None.
    Leaves the epoch's summed loss in ``progress.running`` (a resumed epoch starts from its saved sum); the
    loss is read back from the device only to log and to save, never per step."""
    if progress.order is None:
        progress.order, progress.running, progress.index = torch.randperm(loop.labels.shape[0],
                                                                          generator=loop.generator), 0.0, 0
    device_order = progress.order.to(loop.images.device)
    total_loss = torch.tensor(progress.running, device=loop.images.device)
    for index in range(progress.index, loop.steps_per_epoch):
        total_loss += loop.step(device_order, index, progress.step)
        progress.step += 1
        last = index + 1 == loop.steps_per_epoch
        if (index + 1) % loop.log_every == 0 or last:
            mean_loss = float(total_loss) / (index + 1)
            _log_step(loop, progress, clock, index, mean_loss)
            if not math.isfinite(mean_loss):
                log.warning("%s diverged at epoch %d step %d (loss %s)", loop.name, progress.epoch + 1, index + 1,
                            mean_loss)
                return mean_loss
        if last:
            break  # the epoch-end save covers the last step
        if saver.resume and (saver.due(progress.step) or stop.requested):
            progress.index, progress.running, progress.seconds = index + 1, float(total_loss), clock.seconds()
            saver.save(progress)
        if stop.requested:
            raise preempted(loop.name, stop, progress.step, saver.resume)
    progress.running = float(total_loss)
    return None


def _log_step(loop: Loop, progress: Progress, clock: Clock, index: int, mean_loss: float) -> None:
    images = (progress.step - clock.resumed_from) * loop.batch_size
    log.info("%s epoch %d/%d step %d/%d loss %.4f lr %.2e %.0f img/s", loop.name, progress.epoch + 1, loop.epochs,
             index + 1, loop.steps_per_epoch, mean_loss, loop.optimizer.param_groups[0]["lr"],
             images / max(clock.seconds() - clock.saved, 1e-9))


def _result(loop: Loop, progress: Progress, clock: Clock, status: str, epochs_done: int, loss: float) -> TrainResult:
    """The result, with the learning curve of the epochs that finished (a diverged run's too)."""
    seconds = clock.seconds()
    result = TrainResult(status, epochs_done, progress.step, seconds,
                         progress.step * loop.batch_size / max(seconds, 1e-9), loss, progress.epoch_losses,
                         clock.resumed_from)
    result.history = epoch_history(progress.epoch_losses, progress.epoch_ends, loop.hp, loop.steps_per_epoch)
    return result


def epoch_history(losses: list[float], ends: list[float], hp: dict[str, Any], steps_per_epoch: int) -> list[dict]:
    """One row per epoch: mean train loss, the learning rate at the epoch's last step, wall seconds, img/s."""
    total, rows, previous = steps_per_epoch * int(hp["epochs"]), [], 0.0
    for epoch, (loss, end) in enumerate(zip(losses, ends), start=1):
        factor = lr_factor(epoch * steps_per_epoch - 1, total, hp.get("schedule", "onecycle"),
                           float(hp.get("warmup_fraction", 0.3)))
        rows.append({"epoch": epoch, "train_loss": loss, "lr": hp["lr"] * factor, "seconds": end,
                     "images_per_second": steps_per_epoch * int(hp["batch_size"]) / max(end - previous, 1e-9)})
        previous = end
    return rows
