"""Common image corruptions at severities 1-5, in the spirit of CIFAR-10-C (Hendrycks & Dietterich, 2019),
written for uint8 NCHW batches of any size and channel count so that they work on every data set here.

Each corruption is a function ``(images uint8 [N,C,H,W], severity, generator) -> images uint8``; the
registry maps config names to them. Severity constants follow CIFAR-10-C's, scaled to the image size where
the corruption is spatial.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
CORRUPTIONS: dict[str, Corruption] = {}


def register(name: str) -> Callable[[Corruption], Corruption]:
    def add(function: Corruption) -> Corruption:
        CORRUPTIONS[name] = function
        return function
    return add


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255.0).round().to(torch.uint8)


@register("gaussian_noise")
def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1] * 2  # CIFAR-C's .08-.38 are for natural images
    x = _to_float(images)
    return _to_uint8(x + sigma * torch.randn(x.shape, generator=generator))


@register("gaussian_blur")
def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1] * images.shape[-1] / 32
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    x = _to_float(images)
    channels = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), horizontal, groups=channels)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), vertical, groups=channels)
    return _to_uint8(x)


@register("contrast")
def contrast(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    factor = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    x = _to_float(images)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return _to_uint8((x - mean) * factor + mean)


@register("brightness")
def brightness(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    shift = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    return _to_uint8(_to_float(images) + shift)


@register("pixelate")
def pixelate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    scale = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    height, width = images.shape[-2:]
    small = F.interpolate(_to_float(images), size=(max(1, round(height * scale)), max(1, round(width * scale))),
                          mode="area")
    return _to_uint8(F.interpolate(small, size=(height, width), mode="nearest"))


@register("jpeg")
def jpeg(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Real JPEG compression (Pillow, through matplotlib's dependency) at CIFAR-C's qualities."""
    quality = (80, 65, 58, 50, 40)[severity - 1]
    out = torch.empty_like(images)
    for index, image in enumerate(images):
        array = image.permute(1, 2, 0).numpy()
        mode_array = array[:, :, 0] if array.shape[2] == 1 else array
        buffer = io.BytesIO()
        Image.fromarray(mode_array).save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
        out[index] = torch.from_numpy(decoded.reshape(array.shape).copy()).permute(2, 0, 1)
    return out


def corrupt_split(read: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, types: list[str],
                  severities: list[int], max_images: int | None, seed: int) -> dict[str, torch.Tensor]:
    """A corrupted copy of a split: a seeded sample of ``max_images`` images (``read(indices)`` gives their
    uint8 images: only the sample is read), each corrupted by one (type, severity) combination, the
    combinations dealt out evenly in a seeded order.

    Returns the tensors ``corrupted_x``, ``corrupted_y``, ``corrupted_type`` (index into ``types``) and
    ``corrupted_severity``, in the prepared-data layout so that :class:`PreparedData` reads them.
    """
    generator = torch.Generator().manual_seed(seed)
    total = labels.shape[0]
    n = total if max_images is None else min(max_images, total)
    chosen = torch.randperm(total, generator=generator)[:n].sort().values
    combos = [(t, s) for t in range(len(types)) for s in severities]
    assignment = torch.randperm(n, generator=generator) % len(combos)
    out = read(chosen).clone()
    kind = torch.empty(n, dtype=torch.int64)
    level = torch.empty(n, dtype=torch.int64)
    for index, (type_index, severity) in enumerate(combos):
        where = (assignment == index).nonzero().flatten()
        if where.numel():
            out[where] = CORRUPTIONS[types[type_index]](out[where], severity, generator)
            kind[where], level[where] = type_index, severity
    return {"corrupted_x": out, "corrupted_y": labels[chosen].clone(), "corrupted_type": kind,
            "corrupted_severity": level}
