"""The training loop shared by pretraining and fine-tuning.

A ``TrainSource`` hands the loop uint8 batches in the epoch's order: the tensors path slices them from the
split held on the device and augments each batch as a whole (flip, shift); the files path streams them from
DataLoader workers that apply timm's per-image training transform. Each step then normalises the batch on
the device and applies what works on whole batches for both: timm's random erasing, and mixup / CutMix
(timm's ``Mixup``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from soupflow.core.board import Board
from soupflow.core.distributed import world, wrap
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
from soupflow.plan.catalog import HAND_WRITTEN_SCHEDULES, Hyperparameters
from soupflow.store.files import FileData, TrainTransform, image_seed
from soupflow.store.prepared import PreparedData, run_share

#: what the training functions take: the typed record, or a mapping of some hyperparameters (tests, benchmarks)
HyperparameterValues = Hyperparameters | Mapping[str, Any]

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


# ---------------------------------------------------------------- where the training batches come from
class TrainSource(Protocol):
    """The training images of a loop: how many, and the uint8 batches of an epoch's order from a step on."""

    size: int

    def epoch(self, order: torch.Tensor, start: int, batch_size: int, epoch: int,
              device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TensorSource:
    """The tensors path: images held on the device, each batch augmented as a whole with the loop's generator."""

    images: torch.Tensor
    labels: torch.Tensor
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    generator: torch.Generator = field(default_factory=torch.Generator)

    @classmethod
    def of(cls, images: torch.Tensor, labels: torch.Tensor, hp: HyperparameterValues) -> "TensorSource":
        """uint8 NCHW ``images`` and their labels, augmented as ``hp.augmentation`` says."""
        return cls(images, labels, AUGMENTATIONS[Hyperparameters.of(hp).augmentation])

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    def epoch(self, order, start, batch_size, epoch, device):
        images, labels, order, place = self.images.to(device), self.labels.to(device), order.to(device), world()
        for index in range(start, max(1, self.size // batch_size)):
            batch = order[index * batch_size:(index + 1) * batch_size]
            # the whole batch is augmented, so that its random draws are those of one process
            yield place.shard(self.augment(images[batch], self.generator)), place.shard(labels[batch])


@dataclass
class FileSource:
    """The files path: a split's images (``positions`` of it, or all) streamed by DataLoader workers through
    timm's training transform, seeded per image by (``seed``, epoch, position in the epoch's order)."""

    data: FileData
    split: str
    positions: torch.Tensor | None
    transform: TrainTransform
    seed: int

    @property
    def size(self) -> int:
        return len(self.data.rows[self.split]) if self.positions is None else self.positions.shape[0]

    def epoch(self, order, start, batch_size, epoch, device):
        chosen, place = (order if self.positions is None else self.positions[order]), world()
        first, end = start * batch_size, min(self.size, max(1, self.size // batch_size) * batch_size)
        return self.data.stream(self.split, place.shard(chosen[first:end]), batch_size // place.size, device,
                                self.transform,
                                lambda i: image_seed(self.seed, epoch, first + i * place.size + place.rank))


def train_source(data: PreparedData, split: str, hp: HyperparameterValues,
                 share: torch.Tensor | None = None) -> TrainSource:
    """A loop's training images: the split of ``data`` (its ``share`` of indices, or all), augmented as the
    hyperparameters say, in the way of the data's format."""
    hp = Hyperparameters.of(hp)
    if isinstance(data, FileData):
        transform = TrainTransform(hflip=0.5 if "flip" in hp.augmentation else 0.0,
                                   crop_scale=hp.crop_scale, auto_augment=hp.auto_augment)
        return FileSource(data, split, share, transform, hp.seed)
    images, labels = data.split(split)
    if share is not None:
        images, labels = images[share], labels[share]
    return TensorSource.of(images, labels, hp)


def fine_tuning_source(data: PreparedData, hp: HyperparameterValues) -> TrainSource:
    """A fine-tune's training images: its own share of the train split (``data_fraction``, drawn with its seed)."""
    hp = Hyperparameters.of(hp)
    share = run_share(data.labels("train").shape[0], hp.data_fraction, hp.seed)
    return train_source(data, "train", hp, share)


# ---------------------------------------------------------------- optimiser and schedule
def make_optimizer(model: torch.nn.Module, hp: HyperparameterValues) -> torch.optim.Optimizer:
    """The optimiser ``hp.optimizer`` names (any of ``timm.optim.list_optimizers()``, or ``lookahead_<name>``),
    built by timm's ``create_optimizer_v2`` with the run's lr, weight decay and ``momentum`` (where the optimiser
    takes one). ``nesterov`` goes to every optimiser with a ``nesterov`` argument, so that the run's recorded
    value is what it trained with (timm's names ``sgd`` and ``momentum``, ``lars`` and ``nlars`` differ only in
    that default, which the hyperparameter overrides).

    Parameter groups: by default one group of every parameter, all decayed, as soupflow always trained (for
    ``sgd`` exactly ``torch.optim.SGD(model.parameters(), ...)``); ``wd_norm_bias: false`` = timm's rule, no weight
    decay on biases, norm layers and the model's ``no_weight_decay()`` tensors; ``layer_decay`` = timm's
    layer-wise groups, whose ``lr_scale`` multiplies the schedule's lr (``Loop.step``)."""
    from timm.optim import create_optimizer_v2  # here: importing timm.optim costs seconds

    hp = Hyperparameters.of(hp)
    options = {}
    if _takes_nesterov(hp.optimizer):
        options["nesterov"] = bool(hp.nesterov) and hp.momentum > 0  # torch: Nesterov needs momentum
    grouped = hp.layer_decay is not None or hp.wd_norm_bias is False
    return create_optimizer_v2(model if grouped else model.parameters(), hp.optimizer, lr=hp.lr,
                               weight_decay=hp.weight_decay, momentum=hp.momentum,
                               filter_bias_and_bn=hp.wd_norm_bias is False, layer_decay=hp.layer_decay, **options)


def _takes_nesterov(name: str) -> bool:
    """Whether timm's optimiser ``name`` has a ``nesterov`` argument (a default timm binds, or its class's)."""
    from timm.optim import get_optimizer_info

    info = get_optimizer_info(name.lower().split("_")[-1])  # as timm reads it: lookahead_<name> wraps <name>
    if "nesterov" in (info.defaults or {}):
        return True
    return not isinstance(info.opt_class, str) and "nesterov" in inspect.signature(info.opt_class).parameters


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
    precision: str = "fp32"  # the autocast dtype the steps ran in (bf16 | fp32): recorded with the checkpoint
    ema: dict[str, torch.Tensor] | None = None  # the moving average of the weights (``ema_decay``), else None


def make_ema(model: torch.nn.Module, hp: HyperparameterValues) -> Any:
    """timm's ``ModelEmaV3`` of ``model`` (on its device, fp32) with decay ``hp.ema_decay``, or None when
    the run keeps no moving average. ``Loop.update_ema`` updates it after every optimiser step ``s`` (counted
    from 1) as timm's training script does: ``ema = d_s * ema + (1 - d_s) * weights`` with ``d_1 = 0`` (the
    first step copies the weights) and ``d_s = ema_decay`` after; BatchNorm statistics are averaged alike."""
    decay = Hyperparameters.of(hp).ema_decay
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=float(decay))


def freeze_batchnorm_statistics(model: torch.nn.Module) -> None:
    """BatchNorm layers normalise with their stored running statistics and stop updating them; their affine
    scale and shift still train (``bn_statistics: frozen``)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """What ``training.precision`` autocasts to: bf16 on CUDA (where it pays off) with auto, fp16 or bf16 where
    asked, None (full fp32) on CPU unless asked."""
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None


@dataclass
class Schedule:
    """The learning rate at every optimiser step, before a parameter group's ``lr_scale`` (``layer_decay``).

    The schedules of ``HAND_WRITTEN_SCHEDULES`` (onecycle, cosine, constant) are ``lr`` times ``lr_factor``: timm's
    CosineLRScheduler (warm-up prefix from 0.04·lr) draws the same curves but rounds differently (it computes
    π·t/T and the warm-up's slope in another order: about a third of the steps differ in the last bits,
    tests/test_optim.py), and the default must train bit for bit as before. The others (``TIMM_SCHEDULES``) are
    timm's (``create_scheduler_v2`` counted in steps, ``t_in_epochs=False``), with the one-cycle's warm-up:
    ``warmup`` of the steps from 0.04·lr, then timm's schedule over the rest."""

    lr: float
    total: int
    kind: str = "onecycle"
    warmup: float = 0.3
    _timm: Any = field(default=None, init=False, repr=False)  # timm's scheduler of a TIMM_SCHEDULES kind

    def at(self, step: int) -> float:
        if self.kind in HAND_WRITTEN_SCHEDULES:
            return self.lr * lr_factor(step, self.total, self.kind, self.warmup)
        if self._timm is None:
            self._timm = self._timm_scheduler()
        self._timm.step_update(step)  # stateless: the lr of step ``step`` alone
        return self._timm.optimizer.param_groups[0]["lr"]

    def _timm_scheduler(self) -> Any:
        """timm's scheduler of ``kind`` over a one-tensor optimiser that only holds the lr it sets."""
        from timm.scheduler import create_scheduler_v2

        warmup = int(self.total * self.warmup)
        holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.lr)
        scheduler, _ = create_scheduler_v2(holder, sched=self.kind, num_epochs=max(1, self.total - warmup),
                                           warmup_epochs=warmup, warmup_prefix=True, warmup_lr=0.04 * self.lr,
                                           step_on_epochs=False, updates_per_epoch=1)
        return scheduler


@dataclass
class Numerics:
    """How a step computes: the autocast dtype (None: fp32) and fp16's ``GradScaler`` (``training.precision``),
    the equal micro-batches a batch runs in (``grad_accum_steps``: their gradients add up to the batch's, so the
    optimiser steps once per batch) and the bound on the gradient's L2 norm (``clip_grad``)."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    accumulate: int = 1
    clip: float | None = None

    @classmethod
    def create(cls, hp: Hyperparameters, device: torch.device, precision: str) -> "Numerics":
        dtype = autocast_dtype(device, precision)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(device.type, dtype, scaler, hp.grad_accum_steps or 1, hp.clip_grad)

    @property
    def precision(self) -> str:
        """The autocast dtype's name: bf16, fp16 or fp32."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    def backward(self, net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                 loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Forward and backward of a batch in ``accumulate`` micro-batches, each mean loss weighted by its share
        of the batch (equal pieces: divided by their number; a short batch, e.g. a training set smaller than
        batch_size or images skipped as corrupt, may split into fewer or unequal ones), DDP all-reducing the
        gradients once, after the last; the batch's mean loss, detached."""
        pieces = [(inputs, targets)] if self.accumulate == 1 else list(zip(inputs.chunk(self.accumulate),
                                                                          targets.chunk(self.accumulate)))
        even = len({len(images) for images, _ in pieces}) == 1
        total = None
        for index, (images, labels) in enumerate(pieces):
            deferred = index + 1 < len(pieces) and hasattr(net, "no_sync")
            with net.no_sync() if deferred else contextlib.nullcontext():
                with torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16,
                                    enabled=self.dtype is not None):
                    loss = loss_of(net(images), labels)
                part = loss if len(pieces) == 1 else loss / len(pieces) if even else loss * (len(images) / len(inputs))
                (self.scaler.scale(part) if self.scaler is not None else part).backward()
            total = part.detach() if total is None else total + part.detach()
        return total

    def step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        """The optimiser's step on the gradients: unscaled (fp16) and clipped (``clip``, timm's
        ``dispatch_clip_grad``) first; fp16's scaler skips a step whose gradients overflowed."""
        if self.scaler is not None and self.clip is not None:
            self.scaler.unscale_(optimizer)
        if self.clip is not None:
            from timm.utils import dispatch_clip_grad

            dispatch_clip_grad(model.parameters(), self.clip, mode="norm")
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state(self) -> dict[str, Any] | None:
        """What a resumed loop needs back: the fp16 scaler's scale and growth tracker (None without one)."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


@dataclass
class BatchMixing:
    """What a step applies to a whole normalised batch, the same on both data paths: timm's random erasing
    (probability ``random_erase``) and timm's ``Mixup`` (``mixup`` / ``cutmix`` α, soft targets carrying the
    label smoothing). Their random draws are seeded by the step, so a resumed run draws what it would have."""

    erase: Any = None  # timm.data.random_erasing.RandomErasing
    mixup: Any = None  # timm.data.Mixup
    seed: int = 0

    @classmethod
    def create(cls, hp: Hyperparameters, data: PreparedData, device: torch.device) -> "BatchMixing":
        mixing = cls(seed=hp.seed)
        if hp.random_erase:
            from timm.data.random_erasing import RandomErasing

            mixing.erase = RandomErasing(float(hp.random_erase), mode="pixel", device=str(device))
        if hp.mixup or hp.cutmix:
            from timm.data import Mixup

            mixing.mixup = Mixup(mixup_alpha=float(hp.mixup or 0.0), cutmix_alpha=float(hp.cutmix or 0.0),
                                 label_smoothing=float(hp.label_smoothing), num_classes=data.num_classes)
        return mixing

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch after erasing and mixing, with its targets: class indices, or soft targets when mixed."""
        if self.erase is None and self.mixup is None:
            return inputs, targets
        states = random.getstate(), np.random.get_state()
        random.seed(self.seed * 1_000_003 + step), np.random.seed((self.seed * 1_000_003 + step) % 2**32)
        try:
            inputs = self.erase(inputs) if self.erase is not None else inputs
            return self.mixup(inputs, targets) if self.mixup is not None else (inputs, targets)
        finally:
            random.setstate(states[0]), np.random.set_state(states[1])


@dataclass
class Loop:
    """What stays fixed while a model trains: where its batches come from, the optimiser, the RNG of the data
    order (and of the tensors path's augmentation), the schedule and the numerics. ``step`` is one
    optimisation step."""

    model: torch.nn.Module
    net: torch.nn.Module  # what trains: the model, or DDP around it when the job runs on several processes
    source: TrainSource
    data: PreparedData
    device: torch.device
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    mixing: BatchMixing
    schedule: Schedule
    batch_size: int
    steps_per_epoch: int
    epochs: int
    smoothing: float
    numerics: Numerics
    hp: Hyperparameters
    name: str = "train"  # in progress lines
    log_every: int = 50  # steps between progress lines
    ema: Any = None  # timm's ModelEmaV3 of ``model`` (``make_ema``), or None
    board: Board = field(default_factory=Board)  # TensorBoard scalars (a no-op unless opened)

    @classmethod
    def create(cls, model: torch.nn.Module, source: TrainSource, data: PreparedData, hp: Hyperparameters,
               device: torch.device, options: TrainingOptions) -> "Loop":
        """(Six parameters: the five of ``train``'s task and the job's ``training:`` options.)"""
        generator = torch.Generator().manual_seed(hp.seed)
        if isinstance(source, TensorSource):
            source.generator = generator  # one stream: the epoch's order, then each batch's augmentation
        torch.manual_seed(hp.seed)
        channels_last(model.to(device)).train()
        if hp.bn_statistics == "frozen":
            freeze_batchnorm_statistics(model)
        steps_per_epoch = max(1, source.size // hp.batch_size)  # drop the ragged last batch: stable BatchNorm
        net = wrap(model, device, options.sync_bn)
        net = torch.compile(net) if options.compile else net
        return cls(model, net, source, data, device, make_optimizer(model, hp), generator,
                   BatchMixing.create(hp, data, device), run_schedule(hp, steps_per_epoch), hp.batch_size,
                   steps_per_epoch, hp.epochs, hp.label_smoothing, Numerics.create(hp, device, options.precision), hp)

    def step(self, images: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
        """One optimisation step on a uint8 batch (in ``numerics.accumulate`` micro-batches); the loss,
        detached, on the device."""
        lr = self.schedule.at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # lr_scale: timm's layer-wise decay (layer_decay)
        inputs, targets = self.mixing(channels_last_input(self.data.normalise(images)), targets, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.numerics.backward(self.net, inputs, targets, self.loss)
        self.numerics.step(self.optimizer, self.model)
        return loss

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on class indices (with label smoothing), or on the soft targets of mixup / CutMix
        (label smoothing inside them)."""
        if targets.dim() == 2:
            return torch.sum(-targets * F.log_softmax(outputs.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(outputs, targets, label_smoothing=self.smoothing)

    def update_ema(self, steps_done: int) -> None:
        """Move the weights' moving average (``ema_decay``) toward the weights after an optimiser step:
        call it once per optimiser step, never per micro-batch (``steps_done`` counts optimiser steps from 1)."""
        if self.ema is not None:
            self.ema.update(self.model, step=steps_done)


@dataclass
class Saver:
    """Saves a loop's state where ``resume`` says (periodically, at epoch ends, on a stop request)."""

    resume: Resume | None
    key: str
    loop: Loop

    def restore(self, name: str) -> Progress:
        saved = load_state(self.resume.path, self.key, self.loop.device) if self.resume else None
        if saved is None:
            return Progress()
        progress = restore(saved, self.loop.model, self.loop.optimizer, self.loop.generator)
        self.loop.numerics.load(saved.get("scaler"))  # fp16's loss scale goes on where it was
        if self.loop.ema is not None:
            self.loop.ema.load_state_dict(saved["ema"])  # the fingerprint holds ema_decay: a state with one
        log.info("%s resumes at epoch %d step %d/%d from %s", name, progress.epoch + 1, progress.index,
                 self.loop.steps_per_epoch, self.resume.path)
        return progress

    def save(self, progress: Progress) -> None:
        """Process 0 writes the state (the others hold the same), and every process waits for it."""
        if self.resume and world().main:
            save_state(self.resume.path, self.key, self.loop.model, self.loop.optimizer, self.loop.generator,
                       progress, {"scaler": self.loop.numerics.state(),
                                  "ema": self.loop.ema.state_dict() if self.loop.ema is not None else None})
        world().barrier()

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


@dataclass(frozen=True)
class TrainingOptions:
    """How a job trains, whatever it trains: the config's ``training:`` section's ``precision`` (``Numerics``),
    ``compile`` (the module that trains is ``torch.compile``'d) and ``sync_bn`` (``distributed.wrap``)."""

    precision: str = "auto"
    compile: bool = False
    sync_bn: bool = False

    @classmethod
    def of(cls, training: dict[str, Any]) -> "TrainingOptions":
        """The options of a config's ``training:`` section."""
        return cls(training["precision"], training["compile"], training["sync_bn"])


def train(model: torch.nn.Module, source: TrainSource, data: PreparedData,
          hp: HyperparameterValues, device: torch.device, name: str = "train",
          on_epoch_end: Callable[[int, torch.nn.Module], float | None] | None = None,
          log_every: int = 50, resume: Resume | None = None, options: TrainingOptions = TrainingOptions(),
          tensorboard: str | None = None) -> TrainResult:
    """Train ``model`` in place on the batches of ``source`` (``train_source``) with hyperparameters ``hp``
    (``Hyperparameters``, or a mapping of some of them: the catalog's defaults fill the rest).

    Stops early with status ``diverged`` as soon as the loss is not finite. ``on_epoch_end(epoch, model)``
    is called after each finished epoch (on process 0); a number it returns is the epoch's val accuracy in
    ``TrainResult.history``. With ``resume``, the full state is saved at epoch ends (and every
    ``resume.every_steps`` steps, and on SIGTERM/SIGUSR1), and a rerun continues from it: with the same seed
    the final weights equal those of an uninterrupted run (on CPU). ``options`` are the job's ``training:``
    settings (``TrainingOptions``). With ``hp.ema_decay``
    the loop keeps a moving average of the weights (``make_ema``; saved and resumed with the state), returned
    as ``TrainResult.ema``. With ``tensorboard`` (a folder), process 0 writes the progress lines' loss, lr and
    img/s and each epoch's val accuracy there as TensorBoard scalars (``soupflow.core.board``), by step.
    (Eleven parameters: the five of the task, then six options that callers name or leave out.)
    """
    hp = Hyperparameters.of(hp)
    loop = replace(Loop.create(model, source, data, hp, device, options), name=name, log_every=log_every)
    loop.ema = make_ema(model, hp)  # after Loop.create: a copy of the model as it trains, on its device
    saver = Saver(resume, fingerprint(hp.as_dict(), source.size, resume.start if resume else ""), loop)
    progress = saver.restore(name)
    loop.board = Board.open(tensorboard, progress.step)
    try:
        return _epochs(loop, progress, saver, on_epoch_end, resume)
    finally:
        loop.board.close()


def _epochs(loop: Loop, progress: Progress, saver: Saver,
            on_epoch_end: Callable[[int, torch.nn.Module], float | None] | None, resume: Resume | None) -> TrainResult:
    """``train``'s epochs from where ``progress`` is: its result, or ``Preempted`` on a stop request."""
    clock, name = Clock.resuming(progress), loop.name
    with StopRequests() as stop:
        for epoch in range(progress.epoch, loop.epochs):
            diverged = _run_epoch(loop, progress, clock, saver, stop)
            if diverged is not None:
                return _result(loop, progress, clock, "diverged", epoch, diverged)
            progress.epoch_losses.append(progress.running / loop.steps_per_epoch)
            progress.epoch_ends.append(clock.seconds())
            progress.epoch, progress.index, progress.order, progress.running = epoch + 1, 0, None, 0.0
            progress.epoch_scores.append(_epoch_end(loop, on_epoch_end, epoch + 1, clock))
            loop.board.scalars(progress.step, {"val/accuracy": progress.epoch_scores[-1]})
            progress.seconds = clock.seconds()
            saver.save(progress)
            if stopping(stop, loop):
                raise preempted(name, stop, progress.step, resume)
    return _result(loop, progress, clock, "ok", loop.epochs, progress.epoch_losses[-1])


def _epoch_end(loop: Loop, on_epoch_end: Callable[[int, torch.nn.Module], float | None] | None, epoch: int,
               clock: Clock) -> float:
    """Call ``on_epoch_end`` (process 0 only) and return what it returned as the epoch's score (nan for None).
    It may evaluate the model: the global RNG states are forked around it (a DataLoader's iterator draws its
    seed from them), the model goes back to training mode, and its time is left out of the training seconds
    (and so of img/s), so training goes on, and is measured, as if it had not run."""
    if on_epoch_end is None or not world().main:
        return math.nan
    devices = [torch.cuda.current_device()] if loop.device.type == "cuda" else []
    started = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        value = on_epoch_end(epoch, loop.model)
    clock.start += time.perf_counter() - started
    loop.model.train()
    if loop.hp.bn_statistics == "frozen":
        freeze_batchnorm_statistics(loop.model)
    return math.nan if value is None else float(value)


def _run_epoch(loop: Loop, progress: Progress, clock: Clock, saver: Saver, stop: StopRequests) -> float | None:
    """The steps of one epoch from ``progress.index`` on; the mean loss if it stopped being finite, else None.
    Leaves the epoch's summed loss in ``progress.running`` (a resumed epoch starts from its saved sum); the
    loss is read back from the device only to log and to save, never per step."""
    if progress.order is None:
        progress.order, progress.running, progress.index = torch.randperm(loop.source.size,
                                                                          generator=loop.generator), 0.0, 0
    total_loss = torch.tensor(progress.running, device=loop.device)
    batches = loop.source.epoch(progress.order, progress.index, loop.batch_size, progress.epoch, loop.device)
    for index, (images, targets) in enumerate(batches, start=progress.index):
        total_loss += loop.step(images, targets, progress.step)
        progress.step += 1
        loop.update_ema(progress.step)
        last = index + 1 == loop.steps_per_epoch
        if (index + 1) % loop.log_every == 0 or last:
            mean_loss = world().mean(float(total_loss), loop.device) / (index + 1)
            _log_step(loop, progress, clock, index, mean_loss)
            if not math.isfinite(mean_loss):
                log.warning("%s diverged at epoch %d step %d (loss %s)", loop.name, progress.epoch + 1, index + 1,
                            mean_loss)
                return mean_loss
        if last:
            break  # the epoch-end save covers the last step
        stop_now = stopping(stop, loop)
        if saver.resume and (saver.due(progress.step) or stop_now):
            progress.index, progress.seconds = index + 1, clock.seconds()
            progress.running = world().mean(float(total_loss), loop.device)
            saver.save(progress)
        if stop_now:
            raise preempted(loop.name, stop, progress.step, saver.resume)
    progress.running = world().mean(float(total_loss), loop.device)
    return None


def stopping(stop: StopRequests, loop: Loop) -> bool:
    """Whether to stop now: a stop request reached this process, or (several processes) any of them."""
    if world().any(stop.requested is not None, loop.device) and stop.requested is None:
        stop.requested = "a stop request to another process of the job"
    return stop.requested is not None


def _log_step(loop: Loop, progress: Progress, clock: Clock, index: int, mean_loss: float) -> None:
    """A progress line, and the same figures as TensorBoard scalars at the step (the epoch's mean loss so far)."""
    images = (progress.step - clock.resumed_from) * loop.batch_size
    lr, speed = loop.optimizer.param_groups[0]["lr"], images / max(clock.seconds() - clock.saved, 1e-9)
    log.info("%s epoch %d/%d step %d/%d loss %.4f lr %.2e %.0f img/s", loop.name, progress.epoch + 1, loop.epochs,
             index + 1, loop.steps_per_epoch, mean_loss, lr, speed)
    loop.board.scalars(progress.step, {"train/loss": mean_loss, "train/lr": lr, "train/images_per_second": speed})


def _result(loop: Loop, progress: Progress, clock: Clock, status: str, epochs_done: int, loss: float) -> TrainResult:
    """The result, with the learning curve of the epochs that finished (a diverged run's too)."""
    seconds = clock.seconds()
    result = TrainResult(status, epochs_done, progress.step, seconds,
                         progress.step * loop.batch_size / max(seconds, 1e-9), loss, progress.epoch_losses,
                         clock.resumed_from, precision=loop.numerics.precision,
                         ema=loop.ema.module.state_dict() if loop.ema is not None else None)
    result.history = epoch_history(progress.epoch_losses, progress.epoch_ends, loop.hp, loop.steps_per_epoch,
                                   progress.epoch_scores)
    return result


def run_schedule(hp: Hyperparameters, steps_per_epoch: int) -> Schedule:
    """The learning rate of every optimiser step of a training with ``hp``."""
    return Schedule(hp.lr, steps_per_epoch * hp.epochs, hp.schedule, hp.warmup_fraction)


def epoch_history(losses: list[float], ends: list[float], hp: Hyperparameters, steps_per_epoch: int,
                  scores: list[float] = ()) -> list[dict]:
    """One row per epoch: mean train loss, the learning rate at the epoch's last step, wall seconds, img/s, and
    the epoch's val accuracy (``scores``, what ``on_epoch_end`` returned; nan where there is none, e.g. the
    epochs a state saved by an older soupflow had done before it was resumed)."""
    schedule = run_schedule(hp, steps_per_epoch)
    rows, previous = [], 0.0
    scores = [math.nan] * (len(losses) - len(scores)) + list(scores)[-len(losses):] if losses else []
    for epoch, (loss, end, score) in enumerate(zip(losses, ends, scores), start=1):
        rows.append({"epoch": epoch, "train_loss": loss, "lr": schedule.at(epoch * steps_per_epoch - 1), "seconds": end,
                     "images_per_second": steps_per_epoch * hp.batch_size / max(end - previous, 1e-9),
                     "val_accuracy": score})
        previous = end
    return rows
