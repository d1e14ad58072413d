"""The seed each part of the pipeline uses under the experiment's top-level ``seed``."""

from __future__ import annotations

from typing import Any


def pipeline_seed(config: dict[str, Any], own: int | None) -> int:
    """The seed a part of the pipeline (the init's weights, pretraining, one fine-tune) actually uses under the
    experiment's top-level ``seed``: its own seed when ``seed`` is 0, a different stream for every other value.
    So ``seed: 1`` re-seeds the whole pipeline (splits, init, fine-tunes) while run ids, which hash only a run's
    own hyperparameters, stay the same."""
    return int(own or 0) + 1_000_003 * int(config["seed"])
