"""timm's training stack in soupflow's loop: optimisers by timm's name (with layer-wise lr decay and the
no-weight-decay rule), the schedules, gradient accumulation, gradient clipping and fp16 with its scaler; and
the default (sgd, onecycle) training bit for bit as the loop did before them."""

import copy
import importlib.util
import subprocess
import sys

import pytest
import timm
import torch
from conftest import ROOT
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, create_scheduler_v2

from soupflow.core.models import channels_last, channels_last_input
from soupflow.core.resume import Progress, Resume
from soupflow.core.train import (
    Loop,
    Numerics,
    Saver,
    Schedule,
    TensorSource,
    TrainingOptions,
    lr_factor,
    make_optimizer,
    train,
)
from soupflow.plan.catalog import HAND_WRITTEN_SCHEDULES, HYPERPARAMETER_DEFAULTS, Hyperparameters
from soupflow.plan.config import resolve_config
from soupflow.plan.errors import ConfigError

#: the commit whose loop the default must still reproduce bit for bit (before timm's optimisers and schedules)
BEFORE = "dc6aa25fc02f5d0bf815b890c21a30c3548dd98a"
CPU = torch.device("cpu")


class FakeData:
    num_classes = 4

    def normalise(self, images):
        return images.float() / 255.0


class MLP(torch.nn.Module):
    """Two layers, no BatchNorm: a batch's gradient is the mean of its images' gradients."""

    def __init__(self, side=4):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(side * side, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


class ConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                       torch.nn.Flatten(), torch.nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


def _images(n=256, side=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, side, side), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 4, (n,), generator=g)


def _hp(**changes):
    """A fine-tune's hyperparameters as the job hands them: every catalog default, then ``changes``."""
    return {**HYPERPARAMETER_DEFAULTS, "epochs": 2, "batch_size": 32, "lr": 0.05, **changes}


def _trained(model, hp, images, labels, **options):
    """``train`` a ``model`` (a module, or a class: then built from seed 0)."""
    torch.manual_seed(0)
    model = model() if isinstance(model, type) else model
    result = train(model, TensorSource.of(images, labels, hp), FakeData(), hp, CPU, **options)
    return result, {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- the default, as before
def _loop_before():
    """soupflow.core.train as it was at ``BEFORE`` (from git), as a module of its own."""
    try:
        text = subprocess.run(["git", "show", f"{BEFORE}:src/soupflow/core/train.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"this checkout lacks commit {BEFORE[:7]}, whose loop the default is compared with")
    if "train_before" not in sys.modules:
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader("train_before", loader=None))
        sys.modules["train_before"] = module  # dataclasses look their module up while the text runs
        exec(compile(text, "train_before.py", "exec"), module.__dict__)
    return sys.modules["train_before"]


@pytest.mark.parametrize("changes", [{}, {"schedule": "cosine"}, {"schedule": "constant", "nesterov": False},
                                     {"optimizer": "adamw", "lr": 0.01}, {"label_smoothing": 0.1, "mixup": 0.4}])
def test_the_default_trains_bit_for_bit_as_the_loop_before_timm(changes):
    """sgd (timm's create_optimizer_v2, one group of every parameter) and the hand-written schedules give the
    very weights and losses of the old torch.optim loop, BatchNorm and mixup included."""
    before = _loop_before()
    images, labels = _images(160)
    hp = _hp(**changes)
    runs = []
    for module in (before, sys.modules["soupflow.core.train"]):
        torch.manual_seed(0)
        model = ConvBN()
        torch.manual_seed(0)
        result = module.train(model, module.TensorSource.of(images, labels, hp), FakeData(), hp, CPU)
        runs.append((result.epoch_losses, model.state_dict()))
    (losses_before, weights_before), (losses_now, weights_now) = runs
    assert losses_now == losses_before
    assert all(torch.equal(weights_now[k], weights_before[k]) for k in weights_before)


def test_timm_cosine_scheduler_draws_the_one_cycle_but_not_bit_for_bit_so_the_hand_written_one_stays():
    """timm's CosineLRScheduler (warm-up prefix from 0.04·lr, t_in_epochs=False) gives the one-cycle's lr
    to 1e-12 at every step, but not the same floats at every step: the default keeps ``lr_factor``."""
    differ = 0
    for lr, total in ((0.01, 390), (0.04, 390), (0.05, 2106)):  # the default's fine-tunes and pretraining
        warmup = int(total * 0.3)
        holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        timm_cosine = CosineLRScheduler(holder, t_initial=total - warmup, warmup_t=warmup, warmup_lr_init=0.04 * lr,
                                        warmup_prefix=True, t_in_epochs=False)
        schedule = Schedule(lr, total, "onecycle", 0.3)
        for step in range(total):
            timm_cosine.step_update(step)
            theirs, ours = holder.param_groups[0]["lr"], schedule.at(step)
            assert ours == lr * lr_factor(step, total, "onecycle", 0.3)  # what the loop uses: the hand-written one
            assert theirs == pytest.approx(ours, rel=1e-12, abs=1e-15)
            differ += theirs != ours
    assert differ > 0, "timm's scheduler is now bit-identical: Schedule could use it for onecycle too"
    assert "onecycle" in HAND_WRITTEN_SCHEDULES


def test_timm_sgd_with_one_group_of_every_parameter_steps_as_torch_sgd():
    images, labels = _images(64)
    weights = []
    for build in (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
                  lambda m: create_optimizer_v2(m.parameters(), "sgd", lr=0.1, weight_decay=1e-3, momentum=0.9,
                                                nesterov=True),
                  lambda m: make_optimizer(m, _hp(lr=0.1, weight_decay=1e-3))):
        torch.manual_seed(0)
        model = MLP()
        optimizer = build(model)
        for start in range(0, 64, 16):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[start:start + 16].float() / 255), labels[start:start + 16]).backward()
            optimizer.step()
        weights.append(model.state_dict())
    assert all(torch.equal(w[k], weights[0][k]) for w in weights[1:] for k in weights[0])


# ---------------------------------------------------------------- timm's optimisers
def _tiny_vit():
    return timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=4, in_chans=1, embed_dim=32, depth=3,
                             num_heads=2, num_classes=4)


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_a_timm_optimizer_with_layer_decay_takes_the_steps_of_timms_own(name):
    """The loop with ``optimizer: lamb`` and ``layer_decay`` steps a tiny ViT as timm's create_optimizer_v2
    and timm's scheduler (which applies each group's lr_scale) do by hand on the same batches."""
    images, labels = _images(96, side=8)
    hp = _hp(optimizer=name, lr=0.002, weight_decay=0.05, layer_decay=0.7, wd_norm_bias=False, schedule="constant",
             epochs=1, batch_size=32, seed=5)
    torch.manual_seed(0)
    model = _tiny_vit()
    start = copy.deepcopy(model.state_dict())
    _, looped = _trained(model, hp, images, labels)

    model.load_state_dict(start)
    channels_last(model).train()
    torch.manual_seed(5)
    optimizer = create_optimizer_v2(model, name, lr=0.002, weight_decay=0.05, momentum=0.9, layer_decay=0.7,
                                    filter_bias_and_bn=True)
    scales = {group.get("lr_scale") for group in optimizer.param_groups}
    assert len(scales) > 2 and any(group["weight_decay"] == 0 for group in optimizer.param_groups)
    scheduler, _ = create_scheduler_v2(optimizer, sched="constant", num_epochs=3, step_on_epochs=False,
                                       updates_per_epoch=1)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(5))
    for step in range(3):
        scheduler.step_update(step)
        batch = order[step * 32:(step + 1) * 32]
        loss = torch.nn.functional.cross_entropy(model(channels_last_input(images[batch].float() / 255)), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    by_hand = model.state_dict()
    assert all(torch.equal(looped[k], by_hand[k]) for k in by_hand)


def test_without_wd_norm_bias_every_parameter_decays_and_with_false_timm_spares_norms_and_biases():
    model = _tiny_vit()
    every = make_optimizer(model, _hp(optimizer="adamw", weight_decay=0.05))
    assert [group["weight_decay"] for group in every.param_groups] == [0.05]
    spared = make_optimizer(model, _hp(optimizer="adamw", weight_decay=0.05, wd_norm_bias=False))
    decayed = {id(p) for group in spared.param_groups if group["weight_decay"] for p in group["params"]}
    names = {name for name, p in model.named_parameters() if id(p) not in decayed}
    assert "blocks.0.norm1.weight" in names and "head.bias" in names and "pos_embed" in names
    assert "blocks.0.attn.qkv.weight" not in names


def test_nesterov_defaults_to_the_catalogs_and_momentum_reaches_timms_optimizer():
    model = MLP()
    hp = {"lr": 0.1, "weight_decay": 0.0, "optimizer": "sgd"}  # pretraining and tests may leave both out
    group = make_optimizer(model, hp).param_groups[0]
    assert group["nesterov"] is HYPERPARAMETER_DEFAULTS["nesterov"] is True
    assert group["momentum"] == HYPERPARAMETER_DEFAULTS["momentum"]
    group = make_optimizer(model, {**hp, "optimizer": "lars", "momentum": 0.7, "nesterov": False}).param_groups[0]
    assert group["momentum"] == 0.7 and group["nesterov"] is False
    assert make_optimizer(model, {**hp, "optimizer": "momentum", "nesterov": True}).param_groups[0]["nesterov"]


# ---------------------------------------------------------------- accumulation, clipping, fp16, schedules
def test_two_accumulated_micro_batches_of_64_take_the_step_of_one_batch_of_128():
    images, labels = _images(512)
    hp = _hp(batch_size=128, epochs=2, lr=0.2, weight_decay=1e-3)
    whole, at_once = _trained(MLP, hp, images, labels)
    halves, accumulated = _trained(MLP, {**hp, "grad_accum_steps": 2}, images, labels)
    assert halves.steps == whole.steps == 8  # the schedule counts optimiser steps: one per batch of 128
    assert halves.epoch_losses == pytest.approx(whole.epoch_losses, rel=1e-5)
    assert all(torch.allclose(accumulated[k], at_once[k], rtol=1e-5, atol=1e-6) for k in at_once)
    assert not all(torch.equal(accumulated[k], at_once[k]) for k in at_once)  # two passes really ran


def test_a_short_batch_in_unequal_micro_batches_takes_the_step_of_the_whole_batch():
    """90 images, batch_size 128: one short batch, which 4 micro-batches split 23/23/23/21: each piece's mean
    loss must count by its size, or the gradient comes out scaled."""
    images, labels = _images(90)
    hp = _hp(batch_size=128, epochs=1, lr=0.2)
    whole, at_once = _trained(MLP, hp, images, labels)
    pieces, accumulated = _trained(MLP, {**hp, "grad_accum_steps": 4}, images, labels)
    assert pieces.steps == whole.steps == 1
    assert pieces.epoch_losses == pytest.approx(whole.epoch_losses, rel=1e-5)
    assert all(torch.allclose(accumulated[k], at_once[k], rtol=1e-5, atol=1e-6) for k in at_once)


def test_clip_grad_bounds_the_norm_of_the_gradient_the_optimizer_steps_on():
    images, labels = _images(64)
    norms = {}
    for clip in (None, 0.05):
        hp = _hp(clip_grad=clip, batch_size=64, epochs=1)
        torch.manual_seed(0)
        loop = Loop.create(MLP(), TensorSource.of(images, labels, hp), FakeData(), Hyperparameters.of(hp), CPU,
                           TrainingOptions(precision="fp32"))
        loop.step(images, labels, 0)
        norms[clip] = torch.norm(torch.stack([p.grad.norm() for p in loop.model.parameters()])).item()
    assert norms[None] > 0.05 and norms[0.05] == pytest.approx(0.05, rel=1e-4)


def test_fp16_trains_on_the_cpu_and_the_scalers_state_resumes(tmp_path):
    images, labels = _images(128)
    hp = _hp(batch_size=32, epochs=2)
    result, _ = _trained(MLP, hp, images, labels, options=TrainingOptions(precision="fp16"))
    assert result.status == "ok" and result.precision == "fp16"
    assert result.epoch_losses[-1] < result.epoch_losses[0]

    resume = Resume(str(tmp_path / "resume.pt"))
    loops = [Loop.create(MLP(), TensorSource.of(images, labels, hp), FakeData(), Hyperparameters.of(hp), CPU,
                         TrainingOptions(precision="fp16")) for _ in range(2)]
    assert isinstance(loops[0].numerics.scaler, torch.amp.GradScaler)
    loops[0].step(images[:32], labels[:32], 0)
    loops[0].numerics.scaler.update(1024.0)  # as after overflows: what a resumed loop must not forget
    Saver(resume, "key", loops[0]).save(Progress(step=1, epoch=0, index=1))
    assert Saver(resume, "key", loops[1]).restore("fp16").step == 1
    assert loops[1].numerics.scaler.get_scale() == 1024.0
    assert loops[1].numerics.scaler.state_dict() == loops[0].numerics.scaler.state_dict()


def test_without_fp16_there_is_no_scaler_and_bf16_stays_what_auto_picks():
    defaults = Hyperparameters()
    assert Numerics.create(defaults, CPU, "auto").dtype is None and Numerics.create(defaults, CPU, "fp32").scaler is None
    assert Numerics.create(defaults, torch.device("cuda"), "auto").precision == "bf16"
    assert Numerics.create(defaults, CPU, "fp16").precision == "fp16"


@pytest.mark.parametrize("kind", ["tanh", "wsd"])
def test_timms_schedules_warm_up_from_a_25th_of_the_lr_and_end_low(kind):
    schedule = Schedule(0.1, 100, kind, 0.1)
    lrs = [schedule.at(step) for step in range(100)]
    assert lrs[0] == pytest.approx(0.004) and max(lrs) == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11])) and lrs[-1] < 0.04
    images, labels = _images(64)
    result, _ = _trained(MLP, _hp(schedule=kind, batch_size=16, epochs=4), images, labels)
    assert result.status == "ok" and result.history[-1]["lr"] < result.history[0]["lr"]


# ---------------------------------------------------------------- parse time
@pytest.fixture
def default_config():
    import yaml

    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.mark.parametrize("where, key", [
    (lambda c: c["finetune"].update(optimizer="adamx"), "finetune.optimizer"),
    (lambda c: c["grid"].update(optimizer=["sgd", "lamb", "sgdd"]), "grid.optimizer"),
    (lambda c: c.update(runs=[{"optimizer": "lookahead_adamx"}]), "runs[0].optimizer"),
    (lambda c: c["pretrain"].update(optimizer="sdg"), "pretrain.optimizer"),
])
def test_an_optimizer_timm_does_not_know_is_rejected_at_parse_time_naming_the_key(default_config, where, key):
    where(default_config)
    with pytest.raises(ConfigError) as info:
        resolve_config(default_config, check_paths=False)
    message = str(info.value)
    assert message.startswith(f"config key '{key}'") and "timm.optim.list_optimizers()" in message
    assert "\n" not in message


def test_timms_names_schedules_and_the_new_hyperparameters_parse_and_keep_the_default_run_ids(default_config):
    from soupflow.plan.grid import expand_runs

    before = sorted(expand_runs(resolve_config(copy.deepcopy(default_config), check_paths=False)))
    default_config["runs"] = [{"optimizer": "lamb", "layer_decay": 0.75, "wd_norm_bias": False, "schedule": "wsd",
                               "grad_accum_steps": 4, "clip_grad": 1.0}, {"optimizer": "lookahead_adamw"}]
    default_config["training"] = {"precision": "fp16", "compile": True}
    runs = expand_runs(resolve_config(default_config, check_paths=False))
    assert sorted(set(runs) - set(before)) and set(before) <= set(runs)  # the default's ids are still there


def test_grad_accum_steps_that_do_not_divide_the_batch_are_rejected_naming_the_key(default_config):
    default_config["grid"]["grad_accum_steps"] = [2, 3]
    with pytest.raises(ConfigError, match=r"^config key 'grid.grad_accum_steps' is 3, which does not divide "
                                          r"batch_size 128"):
        resolve_config(default_config, check_paths=False)
