"""How alike two fine-tuned models are: in parameters (relative to their shared init) and in outputs.

Measures of "Too Salty" (section 2.3) and Wortsman et al.'s angle between fine-tuning directions. Parameter
measures use every floating-point tensor of the state dict (BatchNorm statistics included); integer buffers
carry no geometry and are skipped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

StateDict = dict[str, torch.Tensor]


def flatten(state: StateDict) -> torch.Tensor:
    """All floating-point tensors of a state dict as one float64 vector, in sorted key order."""
    return torch.cat([state[k].detach().reshape(-1).double() for k in sorted(state) if state[k].is_floating_point()])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denominator = a.norm() * b.norm()
    return float((a @ b) / denominator) if denominator > 0 else float("nan")


def parameter_similarity(a: torch.Tensor, b: torch.Tensor, init: torch.Tensor) -> dict[str, float]:
    """L2 distance and cosine of the weights, cosine of the task vectors θ−θ0 and the angle at θ0 (degrees)."""
    task_cosine = _cosine(a - init, b - init)
    return {
        "l2_distance": float((a - b).norm()),
        "cosine": _cosine(a, b),
        "task_l2_distance": float(((a - init) - (b - init)).norm()),
        "task_cosine": task_cosine,
        "angle_degrees": math.degrees(math.acos(max(-1.0, min(1.0, task_cosine)))) if task_cosine == task_cosine else float("nan"),
    }


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """½ KL(p_A‖p_B) + ½ KL(p_B‖p_A) of the softmax outputs, averaged over examples."""
    log_a, log_b = F.log_softmax(logits_a.double(), dim=1), F.log_softmax(logits_b.double(), dim=1)
    forward = F.kl_div(log_b, log_a, log_target=True, reduction="batchmean")
    backward = F.kl_div(log_a, log_b, log_target=True, reduction="batchmean")
    return float(0.5 * (forward + backward))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centered kernel alignment (Kornblith et al., 2019) of two [n, d] representations.

    Computed from the feature-space Gram matrices (d×d), so it is linear in the number of examples."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = (y.T @ x).norm() ** 2
    denominator = (x.T @ x).norm() * (y.T @ y).norm()
    return float(cross / denominator) if denominator > 0 else float("nan")


def output_similarity(logits_a: torch.Tensor, logits_b: torch.Tensor, features_a: torch.Tensor,
                      features_b: torch.Tensor) -> dict[str, float]:
    """KL divergence and MSE between logits, linear CKA of logits and of penultimate features."""
    return {
        "kl_divergence": symmetric_kl(logits_a, logits_b),
        "logit_mse": float(((logits_a.double() - logits_b.double()) ** 2).mean()),
        "cka_logits": linear_cka(logits_a, logits_b),
        "cka_features": linear_cka(features_a, features_b),
    }


MEASURES = ("l2_distance", "cosine", "task_l2_distance", "task_cosine", "angle_degrees",
            "kl_divergence", "logit_mse", "cka_logits", "cka_features")
