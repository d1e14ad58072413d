"""The fine-tune job: one grid point trained from the shared init, with its checkpoint, cached outputs (val
and test logits and features, so that soups and the analysis never re-run it), metrics row, learning curve
and config. Every path is the finetune rule's (``RunPaths``)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from soupflow.core.board import add_scalars
from soupflow.core.distributed import world
from soupflow.core.evaluate import Evaluator, scores_from_logits
from soupflow.core.models import (
    checkpoint_metadata,
    count_parameters,
    load_checkpoint,
    model_for,
    save_checkpoint,
    set_threads,
)
from soupflow.core.resume import Preempted, forget, job_resume, state_beside
from soupflow.core.train import TrainingOptions, TrainResult, fine_tuning_source, train
from soupflow.jobs.context import JobContext
from soupflow.jobs.launch import Launch, devices_per_run, launch
from soupflow.plan.catalog import Hyperparameters
from soupflow.plan.layout import epoch_file, run_board
from soupflow.plan.seeds import pipeline_seed
from soupflow.store.io import atomic_link, atomic_save_safetensors, atomic_write_parquet, atomic_write_yaml
from soupflow.store.prepared import DataError
from soupflow.store.tables import EPOCH_SCHEMA, RunMetrics, history_table, metrics_row_table

log = logging.getLogger("soupflow")

#: Errors of the machine or the data, not of the run: they fail the job (a corrupt image: naming it) so that a
#: rerun retries it, never status=failed.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (OSError, MemoryError, torch.cuda.OutOfMemoryError,
                                                          DataError)


@dataclass(frozen=True)
class RunPaths:
    """Every file one fine-tune writes, as the finetune rule names them. ``epochs`` (the table of kept epoch
    checkpoints) only when a soup takes ``ingredients: epochs``; the checkpoints themselves go to the folder
    named like that table without its suffix (``epochs.parquet`` → ``epochs/``), listed relative to it.
    ``ema`` (the moving average of the weights) only when a run of the grid has ``ema_decay``. TensorBoard's
    event files go to ``board``, which no rule declares."""

    model: str
    outputs: str
    history: str
    metrics: str
    config: str
    epochs: str | None = None
    ema: str | None = None

    @property
    def board(self) -> str:
        return run_board(str(Path(self.model).parent))

    @property
    def epochs_folder(self) -> Path | None:
        return Path(self.epochs).with_suffix("") if self.epochs else None


@dataclass(frozen=True)
class RunSpec:
    """One fine-tune: the prepared data, the checkpoint it starts from, its id and its hyperparameters."""

    data: str
    init: str
    run_id: str
    hp: Hyperparameters  # a mapping of hyperparameter names (the rule's params) is read as the typed record

    def __post_init__(self):
        object.__setattr__(self, "hp", Hyperparameters.of(self.hp))


#: val images the learning curve scores after each epoch but the last (a seeded sample: about one val pass per
#: run in all, whatever the epochs); the last epoch's point is the run's own score on the whole val split
CURVE_IMAGES = 1000


def _epoch_end(context: JobContext, folder: Path | None, epochs: int):
    """The fine-tune's ``on_epoch_end``: for every epoch but the last (whose weights are the run's own, scored
    after training), the val accuracy of the learning curve on a seeded sample of ``CURVE_IMAGES`` val images
    (the same for every run and epoch); with ``folder`` (``ingredients: epochs``) the epoch's weights saved
    there too."""
    curve: list[Evaluator] = []

    def end(epoch: int, model: torch.nn.Module) -> float | None:
        if epoch >= epochs:
            return None
        if folder is not None:
            meta = checkpoint_metadata(context.config["model"], context.data, epoch=str(epoch))
            save_checkpoint(model.state_dict(), epoch_file(str(folder), epoch), meta)
        if not curve:
            curve.append(context.evaluator("val", model=model))
            n = curve[0].labels.shape[0]
            curve[0].order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:CURVE_IMAGES]
        return curve[0].select(model.state_dict()).accuracy
    return end


def _epoch_table(run: RunSpec, paths: RunPaths, evaluator: Evaluator, ok: bool) -> pa.Table:
    """Val scores of the epoch checkpoints a fine-tune kept (none for a run that is not ok); each ``path``
    relative to the table's folder, so that the table alone says where its checkpoints are."""
    rows = []
    for epoch in range(1, run.hp.epochs) if ok else []:
        path = Path(epoch_file(str(paths.epochs_folder), epoch))
        scores = evaluator.scores(load_checkpoint(path))
        rows.append({"run_id": run.run_id, "epoch": epoch, "path": os.path.relpath(path, Path(paths.epochs).parent),
                     "val_accuracy": scores.accuracy, "val_loss": scores.loss})
    return pa.Table.from_pylist(rows, schema=EPOCH_SCHEMA)


def _train_run(context: JobContext, run: RunSpec, model: torch.nn.Module, paths: RunPaths) -> tuple[TrainResult, str]:
    """Train ``model`` in place; the result and, for a run that could not train, its error (model = init)."""
    config, data = context.config, context.data
    seeded = replace(run.hp, seed=pipeline_seed(config, run.hp.seed))  # the row keeps the run's own seed
    source = fine_tuning_source(data, seeded)
    log.info("fine-tune %s on %d images, %s: %s", run.run_id, source.size, context.device,
             json.dumps(run.hp.as_dict()))
    end = _epoch_end(context, paths.epochs_folder, run.hp.epochs)
    try:
        return train(model, source, data, seeded, context.device, name=run.run_id, on_epoch_end=end,
                     resume=job_resume(config, state_beside(paths.model), run.init),
                     options=TrainingOptions.of(config["training"]), tensorboard=paths.board), ""
    except (Preempted, KeyboardInterrupt) + INFRASTRUCTURE_ERRORS:
        raise  # killed, disk full, I/O, out of memory: the job fails and a rerun retries (resuming saved state)
    except Exception as failure:  # a run that cannot train (bad hyperparameters, ...) is a result too
        log.exception("%s failed; recorded with status=failed and left out of soups", run.run_id)
        model.load_state_dict(load_checkpoint(run.init))
        return TrainResult("failed", 0, 0, 0.0, 0.0, float("nan")), f"{type(failure).__name__}: {failure}"[:500]


def scored_row(context: JobContext, model: torch.nn.Module, row: RunMetrics) -> dict[str, torch.Tensor]:
    """Val and test scores into ``row`` (status ``diverged`` when logits are not finite; a failed run's stay
    NaN: its model scores as the init); the cached outputs."""
    outputs = {}
    for split in ("val", "test"):
        evaluator = context.evaluator(split, model=model)
        logits, features = evaluator.outputs(features=True)
        scores = scores_from_logits(logits, evaluator.labels)
        if row.status == "ok" and not torch.isfinite(logits).all():
            row.status = "diverged"
        if row.status != "failed":
            row.set_scores(split, scores.accuracy, scores.loss)
        outputs[f"{split}_logits"], outputs[f"{split}_features"] = logits, features
    return outputs


def _scored_ema(context: JobContext, ema: dict[str, torch.Tensor] | None, row: RunMetrics,
                outputs: dict[str, torch.Tensor]) -> None:
    """The moving average's val and test scores into ``row`` (``ema_*``, null without one) and its logits into
    the cached outputs (``ema_val_logits``, ``ema_test_logits``): what soups with ``ingredients: ema`` rank,
    report and ensemble by without running it again. Scored on a model of its own: ``model`` stays the run's."""
    if ema is None or row.status == "failed":
        return
    model = context.model()
    for split in ("val", "test"):
        evaluator = context.evaluator(split, model=model)
        logits = evaluator.logits(ema)
        scores = scores_from_logits(logits, evaluator.labels)
        row.set_scores(f"ema_{split}", scores.accuracy, scores.loss)
        outputs[f"ema_{split}_logits"] = logits
    log.info("%s: moving average of the weights: val accuracy %.4f, test accuracy %.4f", row.run_id,
             row.ema_val_accuracy, row.ema_test_accuracy)


def _save_ema(paths: RunPaths, ema: dict[str, torch.Tensor] | None, meta: dict[str, str], decay: Any) -> None:
    """``ema.safetensors`` where the rule declares it: the moving average, with the run's checkpoint metadata
    (plain timm loads it as it loads ``model.safetensors``). A run without ``ema_decay`` (or one that failed)
    has no moving average: its file is its ``model.safetensors`` itself (a hard link), and soups with
    ``ingredients: ema`` leave the run out (its ``hp_ema_decay`` is null, or its status not ok)."""
    if paths.ema is None:
        return
    if ema is None:
        atomic_link(paths.model, paths.ema)
        return
    save_checkpoint(ema, paths.ema, {**meta, "weights": "ema", "ema_decay": str(decay)})


def _row(run: RunSpec, result: TrainResult, error: str, model: torch.nn.Module, device: torch.device) -> RunMetrics:
    """The run's metrics row before scoring: hyperparameters and training figures."""
    return RunMetrics(run.run_id, run.hp.as_dict(), result.status, error, result.resumed_from_step, result.epochs_done,
                      result.train_loss, result.seconds, result.images_per_second, count_parameters(model),
                      device.type)


def training_model(model_config: dict[str, Any], hp: Hyperparameters) -> dict[str, Any]:
    """The model config a run trains: with its ``drop_path_rate`` (stochastic depth; the state dict, and so
    every checkpoint and soup, is the same architecture's)."""
    if hp.drop_path_rate is None:
        return model_config
    return {**model_config, "kwargs": {**model_config["kwargs"], "drop_path_rate": hp.drop_path_rate}}


def finetune(config: dict[str, Any], run: RunSpec, paths: RunPaths, threads: int = 1) -> dict[str, Any]:
    """Fine-tune one configuration from the shared init; write its checkpoint, outputs, metrics and config.

    A run whose loss stops being finite is recorded with ``status=diverged``, one whose training raises with
    ``status=failed`` (and the error); both are left out of soups, and their outputs are still written so the
    rest of the workflow completes. A kill (signal, SLURM time limit) is not a failure: the job exits and its
    rerun resumes from the saved training state. With ``paths.epochs``, every epoch but the last is also kept
    and listed with its val scores (soups with ``ingredients: epochs``). With ``training.devices_per_run``
    above 1 the job runs on that many processes (``soupflow.jobs.launch``); process 0 writes every file.
    """
    if devices_per_run(config) > 1 and world().size == 1:
        launch(Launch(finetune, config, (run, paths), threads), Path(paths.model).parent)
        return pd.read_parquet(paths.metrics).iloc[0].to_dict()
    set_threads(threads)
    hp = run.hp
    context = JobContext.open(config, run.data, threads, training=True)
    model = model_for(context.data, training_model(config["model"], hp))
    model.load_state_dict(load_checkpoint(run.init))
    result, error = _train_run(context, run, model, paths)
    if not world().main:
        return {}  # process 0 scores the run and writes its files
    row = _row(run, result, error, model, context.device)
    outputs = scored_row(context, model, row)
    _scored_ema(context, result.ema, row, outputs)
    row.images_skipped = context.data.skipped  # unreadable images passed over (data.skip_corrupt)
    log.info("%s: status %s, val accuracy %.4f, test accuracy %.4f, %.0f s", run.run_id, row.status,
             row.val_accuracy, row.test_accuracy, result.seconds)
    meta = checkpoint_metadata(config["model"], context.data, run_id=run.run_id, status=row.status,
                               device=context.device.type, precision=result.precision)  # what the run trained on
    save_checkpoint(model.state_dict(), paths.model, meta)
    _save_ema(paths, result.ema, meta, hp.ema_decay)
    atomic_save_safetensors(outputs, paths.outputs)
    if result.steps:  # the run's own val scores (the last epoch's point) beside its learning curve
        add_scalars(paths.board, result.steps, {"val/accuracy": row.val_accuracy,
                                                "val/ema_accuracy": row.ema_val_accuracy})
    atomic_write_yaml({"run_id": run.run_id, "hyperparameters": hp.as_dict(), "model": config["model"],
                       "data": config["data"]["name"], "init": run.init}, paths.config)
    history = result.history
    if history and history[-1]["epoch"] == hp.epochs:  # the last epoch's weights are the run's: scored above
        history[-1]["val_accuracy"] = row.val_accuracy
    atomic_write_parquet(history_table(run.run_id, history), paths.history)
    if paths.epochs:
        table = _epoch_table(run, paths, context.evaluator("val", model=model), row.status == "ok")
        atomic_write_parquet(table, paths.epochs)
    atomic_write_parquet(metrics_row_table([row.columns()]), paths.metrics)
    forget(state_beside(paths.model))
    return row.columns()
