"""The training loop shared by pretraining and fine-tuning.

Data is a pair of in-memory uint8 tensors; each step slices a batch, augments the whole batch at once
(on the batch's device) and normalises it. No per-sample Python runs in the loop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from soupflow.data import PreparedData
from soupflow.io import atomic_path
from soupflow.models import channels_last, channels_last_input

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


# ---------------------------------------------------------------- resumable state
class Preempted(RuntimeError):
    """Training stopped on SIGTERM/SIGUSR1 after saving its state; rerunning the job resumes it."""


class StopRequests:
    """Turns SIGTERM and SIGUSR1 (SLURM's time-limit and pre-emption warnings) into a flag the loop
    checks after every step, so the state is saved at a step boundary before the process exits."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.requested = signal.Signals(number).name

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass
class Resume:
    """Where the full training state is kept, and how often it is saved (0 = at epoch ends only)."""

    path: str
    every_steps: int = 0
    start: str = ""  # identity of what training starts from (checkpoint hash, model config): see load_state


def _fingerprint(hp: dict[str, Any], n: int, start: str) -> str:
    return json.dumps({"hp": hp, "n": n, "start": start}, sort_keys=True, default=str)


def save_state(path: str, fingerprint: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               generator: torch.Generator, progress: dict[str, Any]) -> None:
    """Model, optimiser, RNG states and loop position, written atomically (a kill never truncates it)."""
    state = {"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), **progress}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str, fingerprint: str, device: torch.device) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # damaged (a disk fault, a copy cut short): start over rather than fail for good
        log.warning("discarding %s and training from the start: it cannot be read (%s: %s)", path,
                    type(error).__name__, error)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("discarding %s and training from the start: it was saved for other hyperparameters, data, "
                    "model or starting weights (e.g. the init was retrained since)", path)
        return None
    return state


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


def train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, data: PreparedData,
          hp: dict[str, Any], device: torch.device, name: str = "train",
          on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None,
          log_every: int = 50, resume: Resume | None = None, precision: str = "auto") -> TrainResult:
    """Train ``model`` in place on ``images``/``labels`` (uint8 NCHW / int64) with hyperparameters ``hp``.

    Stops early with status ``diverged`` as soon as the loss is not finite. ``on_epoch_end(epoch, model)``
    is called after each finished epoch. With ``resume``, the full state is saved at epoch ends (and every
    ``resume.every_steps`` steps, and on SIGTERM/SIGUSR1), and a rerun continues from it: with the same seed
    the final weights equal those of an uninterrupted run (on CPU).
    """
    generator = torch.Generator().manual_seed(int(hp.get("seed", 0)))
    torch.manual_seed(int(hp.get("seed", 0)))
    augment = AUGMENTATIONS[hp.get("augmentation", "none")]
    bf16 = use_bf16(device, precision)
    channels_last(model.to(device)).train()
    if hp.get("bn_statistics") == "frozen":
        freeze_batchnorm_statistics(model)
    optimizer = make_optimizer(model, hp)
    n, batch_size = labels.shape[0], int(hp["batch_size"])
    steps_per_epoch = max(1, n // batch_size)  # drop the ragged last batch: stable BatchNorm statistics
    epochs = int(hp["epochs"])
    total = steps_per_epoch * epochs
    warmup = float(hp.get("warmup_fraction", 0.3))
    images, labels = images.to(device), labels.to(device)
    smoothing = float(hp.get("label_smoothing", 0.0))
    fingerprint = _fingerprint(hp, n, resume.start if resume else "")
    step, first_epoch, first_index, order, running, epoch_losses, spent = 0, 0, 0, None, 0.0, [], 0.0
    epoch_ends: list[float] = []  # seconds since the start (kills excluded) at each epoch's end
    saved = load_state(resume.path, fingerprint, device) if resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"].cpu())
        torch.set_rng_state(saved["torch_rng"].cpu())
        if "cuda_rng" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda_rng"]])
        step, first_epoch, first_index = saved["step"], saved["epoch"], saved["index"]
        order, running, epoch_losses, spent = saved["order"], saved["running"], saved["epoch_losses"], saved["seconds"]
        epoch_ends = saved.get("epoch_ends", [])
        log.info("%s resumes at epoch %d step %d/%d from %s", name, first_epoch + 1, first_index, steps_per_epoch,
                 resume.path)
    resumed_from, start = step, time.perf_counter() - spent

    def finish(status: str, epochs_done: int, loss: float) -> TrainResult:
        """The result, with the learning curve of the epochs that finished (a diverged run's too)."""
        result = _result(status, epochs_done, step, start, batch_size, loss, epoch_losses, resumed_from)
        result.history = epoch_history(epoch_losses, epoch_ends, hp, steps_per_epoch)
        return result

    def progress(epoch: int, index: int, order: torch.Tensor | None, running: float) -> dict[str, Any]:
        return {"step": step, "epoch": epoch, "index": index, "order": order, "running": running,
                "epoch_losses": list(epoch_losses), "epoch_ends": list(epoch_ends),
                "seconds": time.perf_counter() - start}

    with StopRequests() as stop:
        for epoch in range(first_epoch, epochs):
            if epoch != first_epoch or order is None:
                order, running, first_index = torch.randperm(n, generator=generator), 0.0, 0
            device_order = order.to(device)
            total_loss = torch.tensor(running, device=device)
            for index in range(first_index, steps_per_epoch):
                for group in optimizer.param_groups:
                    group["lr"] = hp["lr"] * lr_factor(step, total, hp.get("schedule", "onecycle"), warmup)
                batch = device_order[index * batch_size:(index + 1) * batch_size]
                inputs = channels_last_input(data.normalise(augment(images[batch], generator)))
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(model(inputs), labels[batch], label_smoothing=smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.detach()
                step += 1
                if (index + 1) % log_every == 0 or index + 1 == steps_per_epoch:
                    mean_loss = float(total_loss) / (index + 1)
                    elapsed = time.perf_counter() - start
                    log.info("%s epoch %d/%d step %d/%d loss %.4f lr %.2e %.0f img/s", name, epoch + 1, epochs,
                             index + 1, steps_per_epoch, mean_loss, optimizer.param_groups[0]["lr"],
                             (step - resumed_from) * batch_size / max(elapsed - spent, 1e-9))
                    if not math.isfinite(mean_loss):
                        log.warning("%s diverged at epoch %d step %d (loss %s)", name, epoch + 1, index + 1, mean_loss)
                        return finish("diverged", epoch, mean_loss)
                if index + 1 == steps_per_epoch:
                    break  # the epoch-end save below covers the last step
                periodic = resume and resume.every_steps and step % resume.every_steps == 0
                if resume and (periodic or stop.requested):
                    save_state(resume.path, fingerprint, model, optimizer, generator,
                               progress(epoch, index + 1, order, float(total_loss)))
                if stop.requested:
                    raise _preempted(name, stop, step, resume)
            epoch_losses.append(float(total_loss) / steps_per_epoch)
            epoch_ends.append(time.perf_counter() - start)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, model)
            if resume:
                save_state(resume.path, fingerprint, model, optimizer, generator, progress(epoch + 1, 0, None, 0.0))
            if stop.requested:
                raise _preempted(name, stop, step, resume)
    return finish("ok", epochs, epoch_losses[-1])


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


def _preempted(name: str, stop: StopRequests, step: int, resume: Resume | None) -> Preempted:
    where = f"; state saved to {resume.path}, rerun to resume" if resume else ""
    return Preempted(f"{name}: stopped by {stop.requested} at step {step}{where}")


def _result(status, epochs_done, steps, start, batch_size, loss, epoch_losses, resumed_from=0) -> TrainResult:
    seconds = time.perf_counter() - start
    return TrainResult(status, epochs_done, steps, seconds, steps * batch_size / max(seconds, 1e-9), loss,
                       epoch_losses, resumed_from)
