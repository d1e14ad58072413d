"""What the shared pretraining learns: the task's own labels, or a self-supervised pretext task.

``pretrain.task: rotation`` trains the shared init to tell which of four rotations (0, 90, 180, 270
degrees) an image was turned by (Gidaris et al., 2018), never reading a class label. Fine-tunes then start
from features learnt for *another* task, as in the soup papers' transfer setting (CLIP or ImageNet weights
fine-tuned on a new task), instead of from a model that has already learnt the fine-tuning task from more
images than the fine-tunes see. The classifier head trained on the pretext is replaced by a fresh, seeded
head shared by every fine-tune (see ``fresh_head``).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

Task = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def labels_task(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Supervised pretraining on the task's own labels: the data as it is."""
    return images, labels


def rotation_task(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image four times, turned by k x 90 degrees, with target k (class labels are not used)."""
    turned = [torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]
    targets = torch.arange(4).repeat_interleave(images.shape[0])
    return torch.cat(turned), targets


#: ``pretrain.task`` name -> function (images, labels) -> (images, targets) to pretrain on.
PRETEXT_TASKS: dict[str, Task] = {"labels": labels_task, "rotation": rotation_task}


def uses_labels(task: str) -> bool:
    """True when the pretrained head already predicts the fine-tuning classes."""
    return task == "labels"


def fresh_head(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The tensors of a newly initialised classifier head (seeded), to replace a pretext task's head."""
    classifier = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is classifier)
    fresh = copy.deepcopy(classifier)
    torch.manual_seed(seed)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return {f"{prefix}.{key}": value for key, value in fresh.state_dict().items()}
