"""timm models, devices and checkpoints as plain state dicts.

Checkpoints are safetensors files of ``model.state_dict()``, readable by plain timm + safetensors:
``model = timm.create_model(name, num_classes=n, **kwargs); model.load_state_dict(load_file(path))``.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import torch

from soupflow.core.distributed import world
from soupflow.plan.gpus import claim_gpu
from soupflow.store.io import atomic_save_safetensors, read_safetensors

if TYPE_CHECKING:
    from soupflow.store.prepared import PreparedData


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU. With several visible GPUs the job claims one of its own."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("evaluation.device is 'cuda' but no CUDA device is available")
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if world().size > 1:  # one process of a job on several: the launcher gave the job its GPUs, one each
        index = world().local_rank
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    index = claim_gpu(torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def set_threads(threads: int | None) -> None:
    """Use the cores Snakemake gave this job, no more."""
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Put a model's 4-D weights in channels_last (NHWC) layout, on any device.

    Convolutions run faster in NHWC on GPUs (tensor cores) and on x86 CPUs (oneDNN): on this project's
    2-core CPU, 1.36x for training and 1.5-1.7x for evaluation of resnet10t. Models without 4-D weights are
    unchanged. Checkpoints are saved contiguous (``io.atomic_save_safetensors``), so files do not depend on it."""
    return model.to(memory_format=torch.channels_last)


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (in eval mode) as scored: a copy with each BatchNorm folded into the convolution before it
    (``torch.fx``'s ``fuse``), which halves a CPU pass of a narrow ResNet; logits agree to ~1e-5. The model
    itself where it has no BatchNorm or ``torch.fx`` cannot trace it."""
    if model.training or not has_batchnorm(model):
        return model
    try:
        from torch.fx.experimental.optimization import fuse

        return channels_last(fuse(model))
    except Exception:  # a model torch.fx cannot trace is scored as it is
        return model


def _conv_bn_pairs(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names that torch.fx's ``fuse`` folds: a BatchNorm2d whose only input is
    a Conv2d that feeds nothing else."""
    from torch import fx

    graph, modules = fx.symbolic_trace(model).graph, dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if (isinstance(modules.get(node.target), torch.nn.BatchNorm2d) and isinstance(source, torch.fx.Node)
                and source.op == "call_module" and isinstance(modules.get(source.target), torch.nn.Conv2d)
                and len(source.users) == 1):
            pairs.append((source.target, node.target))
    return pairs


class Folded:
    """A model as scored, BatchNorm folded in (``inference_model``), traced once: ``refresh`` folds the model's
    current weights into the traced copy with the function ``fuse`` folds with (``fuse_conv_bn_weights``), so
    a new state costs tensor arithmetic, not a trace (the soups job scores hundreds of states). The model
    itself where ``inference_model`` returns it; a fold ``fuse`` does otherwise than expected refolds anew."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.module = model, inference_model(model)
        self.pairs = _conv_bn_pairs(model) if self.module is not model else []
        kept = dict(self.module.named_modules())
        if any(bn in kept for _, bn in self.pairs) or not all(conv in kept for conv, _ in self.pairs):
            self.pairs = None  # not the fold this class mirrors: trace and fuse per state instead
        self.folded = {f"{conv}.{kind}" for conv, _ in self.pairs or [] for kind in ("weight", "bias")}

    @torch.no_grad()
    def refresh(self) -> torch.nn.Module:
        """The scored module with the model's current weights."""
        if self.module is self.model:
            return self.model
        if self.pairs is None:
            self.module = inference_model(self.model)
            return self.module
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        state, target = self.model.state_dict(), self.module.state_dict()
        for name, tensor in target.items():
            if name not in self.folded:
                tensor.copy_(state[name])
        for conv, bn in self.pairs:
            weight, bias = fuse_conv_bn_weights(state[f"{conv}.weight"], state.get(f"{conv}.bias"),
                                                state[f"{bn}.running_mean"], state[f"{bn}.running_var"],
                                                self.model.get_submodule(bn).eps, state[f"{bn}.weight"],
                                                state[f"{bn}.bias"])
            target[f"{conv}.weight"].copy_(weight)
            target[f"{conv}.bias"].copy_(bias)
        return self.module


def channels_last_input(images: torch.Tensor) -> torch.Tensor:
    """A batch in the layout of a ``channels_last`` model (a no-op for one channel)."""
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images


def create_model(model_config: dict[str, Any], num_classes: int, in_chans: int, pretrained: bool = False,
                 pretrained_cfg_overlay: dict[str, Any] | None = None) -> torch.nn.Module:
    """A timm model for this experiment's classes and channels (kwargs from config win)."""
    import timm  # here, not at the top: 2.6 s to import (measured after torch), paid only by jobs that build a model

    kwargs = {"num_classes": num_classes, "in_chans": in_chans, **model_config.get("kwargs", {})}
    if pretrained_cfg_overlay:
        kwargs["pretrained_cfg_overlay"] = pretrained_cfg_overlay
    try:
        return timm.create_model(model_config["name"], pretrained=pretrained, **kwargs)
    except TypeError as error:  # an argument the architecture does not take
        raise TypeError(f"config key 'model.kwargs' {model_config.get('kwargs', {})} does not fit timm's "
                        f"{model_config['name']!r} ({error})") from None


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, str] | None = None) -> None:
    atomic_save_safetensors(state_dict, path, metadata)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file (or a .pth/.pt file holding one, for ``model.init = file``)."""
    path = str(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path, device=str(device))
    state = torch.load(path, map_location=device, weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_for(data: PreparedData, model_config: dict[str, Any], **timm_kwargs: Any) -> torch.nn.Module:
    """The configured timm model for this data (its classes and channels; the header holds both)."""
    return create_model(model_config, data.num_classes, data.image_shape[0], **timm_kwargs)


def untrained_state(data: PreparedData, model_config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """The weights of a freshly initialised model (seeded): the 'untrained' soup and sanity ablations."""
    torch.manual_seed(seed)
    return model_for(data, model_config).state_dict()


def checkpoint_metadata(model_config: dict[str, Any], data: PreparedData, **extra: Any) -> dict[str, str]:
    """What plain timm needs to rebuild the architecture and feed it, stored in the safetensors header:
    name, classes, channels, kwargs, and the input size and per-channel mean/std (of uint8 / 255)."""
    channels, height, width = data.image_shape
    meta = {"model": model_config["name"], "num_classes": str(data.num_classes), "in_chans": str(channels),
            "kwargs": json.dumps(model_config.get("kwargs", {})), "format": "soupflow state_dict",
            "input_size": json.dumps([channels, height, width]), "mean": json.dumps(data.mean.flatten().tolist()),
            "std": json.dumps(data.std.flatten().tolist())}
    meta.update({k: str(v) for k, v in extra.items()})
    return meta
