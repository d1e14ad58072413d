"""Job: score one outside checkpoint (config section ``pool``) as the workflow scores a fine-tune, so that it
is a row of the runs table like any run: its val and test scores, its cached logits and features, and its
weights as a ``.safetensors`` file with soupflow's metadata (plain timm loads it; soups read it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from soupflow.core.models import checkpoint_metadata, count_parameters, load_checkpoint, save_checkpoint, set_threads
from soupflow.jobs.context import JobContext
from soupflow.jobs.finetune import scored_row
from soupflow.plan.model_file import WeightsError
from soupflow.store.io import atomic_save_safetensors, atomic_write_parquet
from soupflow.store.tables import RunMetrics, metrics_row_table

log = logging.getLogger("soupflow")


@dataclass(frozen=True)
class PoolPaths:
    """The files of one outside checkpoint's job (``layout.pool_files``; rule pool_checkpoint's outputs)."""

    model: str
    outputs: str
    metrics: str


@dataclass(frozen=True)
class PoolSpec:
    """One outside checkpoint: the prepared data, its id (``pool-<name>``) and the file it came from."""

    data: str
    pool_id: str
    source: str


def score_pool_checkpoint(config: dict, spec: PoolSpec, paths: PoolPaths, threads: int = 1) -> RunMetrics:
    """Load ``spec.source`` into the configured model (strictly: a file of another architecture is an error
    naming it; the plan checked it before any job where timm was there), score it on val and test, and write
    its weights, cached outputs and metrics row (status ok, no hyperparameters, ``source`` its file)."""
    set_threads(threads)
    context = JobContext.open(config, spec.data, threads)
    model = context.model()
    try:
        model.load_state_dict(load_checkpoint(spec.source))
    except RuntimeError as error:
        raise WeightsError(f"config key 'pool.checkpoints' names {spec.source!r}, which does not fit model.name "
                           f"{config['model']['name']!r}: {str(error).splitlines()[0]}") from None
    row = RunMetrics.outside(spec.pool_id, spec.source, count_parameters(model), context.device.type)
    outputs = scored_row(context, model, row)
    log.info("%s (%s): val accuracy %.4f, test accuracy %.4f", spec.pool_id, spec.source, row.val_accuracy,
             row.test_accuracy)
    save_checkpoint(model.state_dict(), paths.model,
                    checkpoint_metadata(config["model"], context.data, run_id=spec.pool_id, source=spec.source))
    atomic_save_safetensors(outputs, paths.outputs)
    atomic_write_parquet(metrics_row_table([row.columns()]), paths.metrics)
    return row
