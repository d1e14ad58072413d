"""The work of the training steps (the shared init, one fine-tune) and the helpers every job shares
(logging, the configured model, checkpoint metadata, table concatenation), as plain functions of paths and
settings. The soup job is ``soup_job``, the analysis' jobs ``analysis_jobs``.

Snakemake's scripts in ``workflow/scripts/`` only unpack the ``snakemake`` object and call these, so each
step can also be run (and tested) without Snakemake.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from soupflow.batchnorm import BatchNormRefresher, has_batchnorm
from soupflow.config import HYPERPARAMETERS, pipeline_seed
from soupflow.data import PreparedData, subset
from soupflow.evaluate import Evaluator, scores_from_logits
from soupflow.io import (
    atomic_save_safetensors,
    atomic_write_parquet,
    atomic_write_yaml,
    file_digest,
    remove_orphan_temps,
)
from soupflow.models import count_parameters, create_model, load_checkpoint, pick_device, save_checkpoint, set_threads
from soupflow.pretext import PRETEXT_TASKS, fresh_head, uses_labels
from soupflow.tables import EPOCH_SCHEMA, history_table, run_table
from soupflow.train import Preempted, Resume, TrainResult, train
from soupflow.weights import import_state, resolve_file

log = logging.getLogger("soupflow")


def setup_logging(log_file: str | None = None, history: str | os.PathLike | None = None) -> None:
    """Progress to stderr (shown by Snakemake) and to the job's log file. Jobs that resume pass ``history``
    (see ``history_of``): what earlier, killed attempts logged comes first in the log, and is kept there."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        earlier = Path(history).read_text() if history and Path(history).exists() else ""
        Path(log_file).write_text(earlier)
        handlers.append(logging.FileHandler(log_file, mode="a"))
        if history:
            handlers.append(logging.FileHandler(history, mode="a"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)


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


#: Errors of the machine, not of the run: they fail the job so that a rerun retries it (never status=failed).
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (OSError, MemoryError, torch.cuda.OutOfMemoryError)


# ---------------------------------------------------------------- shared init
def _timm_pretrained(data: PreparedData, model_config: dict[str, Any]) -> torch.nn.Module:
    """timm's own pretrained weights: from ``model.file`` (a timm-format checkpoint, offline) or the hub.

    timm adapts the input channels and re-creates a head of another size itself (``load_pretrained``).
    """
    overlay = {"file": resolve_file(model_config["file"])} if model_config.get("file") else None
    try:
        return model_for(data, model_config, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as error:  # network errors surface as many exception types
        where = f"model.file {model_config['file']!r}" if overlay else "the Hugging Face hub"
        raise RuntimeError(
            f"could not load timm weights for {model_config['name']!r} from {where} ({type(error).__name__}: "
            f"{error}). model.init: timm needs network access to the hub, a filled HF cache, or model.file "
            "naming a timm-format checkpoint; offline, use model.init: pretrain or model.init: file") from None


def make_init(config: dict[str, Any], data_path: str, out_model: str, epoch_paths: dict[int, str],
              threads: int = 1) -> None:
    """Produce the weights every fine-tune starts from: pretrained here, read from a file, or from timm's hub.

    All fine-tunes share this checkpoint *including the classifier head*: heads re-initialised per run
    with different seeds would put runs in different basins and break averaging.
    """
    set_threads(threads)
    data, model_config = PreparedData(data_path), config["model"]
    device = pick_device(config["evaluation"]["device"])
    torch.manual_seed(pipeline_seed(config, model_config.get("head_seed", 0)))
    init = model_config["init"]
    model = _timm_pretrained(data, model_config) if init == "timm" else model_for(data, model_config)
    meta = checkpoint_metadata(model_config, data, init=init)
    if init == "file":
        file = resolve_file(model_config["file"])
        fitted, report = import_state(model, load_checkpoint(file), model_config["file"],
                                      model_config.get("match", "name"), model_config.get("rename"))
        model.load_state_dict(fitted)
        log.info("imported %s: %s (fresh tensors seeded with model.head_seed %s)", model_config["file"],
                 report.summary(), model_config.get("head_seed", 0))
        meta.update(report.metadata())
    if model_config.get("init_bn") == "recompute" and has_batchnorm(model):
        refresher = BatchNormRefresher(model, data, device, 2000, pipeline_seed(config, 0))
        model.load_state_dict(refresher.refresh(model.state_dict()))
        log.info("BatchNorm statistics of the init re-estimated on %d train images (model.init_bn: recompute)",
                 refresher.images.shape[0])
    # Kept epochs go to a staging folder first and are moved into place only when pretraining finished:
    # Snakemake deletes the outputs of a failed job, and a resumed job cannot re-save past epochs.
    staging = Path(out_model).parent / ".staging"
    staged = {epoch: staging / Path(path).name for epoch, path in epoch_paths.items()}
    if 0 in staged and not staged[0].exists():
        save_checkpoint(model.state_dict(), staged[0], {**meta, "epoch": "0"})
    resume_path = Path(out_model).parent / "resume.pt"
    if init == "pretrain":

        task = config["pretrain"].get("task", "labels")
        hp = {**config["pretrain"], "nesterov": True, "label_smoothing": 0.0, "warmup_fraction": 0.3,
              "seed": pipeline_seed(config, config["pretrain"]["seed"])}
        images, labels = PRETEXT_TASKS[task](*data.split("pretrain"))
        head = {} if uses_labels(task) else fresh_head(model, pipeline_seed(config, model_config.get("head_seed", 0)))
        if head:
            log.info("pretraining on the %s pretext task (%d images); fine-tunes get a fresh head: %s",
                     task, labels.shape[0], ", ".join(head))

        def keep(epoch: int, trained: torch.nn.Module) -> None:
            if epoch in staged:
                save_checkpoint({**trained.state_dict(), **head}, staged[epoch], {**meta, "epoch": str(epoch)})

        result = train(model, images, labels, data, hp, device, name="pretrain", on_epoch_end=keep,
                       resume=_resume(config, resume_path, data_path), precision=config["training"]["precision"])
        if result.status != "ok":
            raise RuntimeError("pretraining diverged; lower pretrain.lr")
        model.load_state_dict({**model.state_dict(), **head})
        scores = Evaluator(model, data, "val", device).scores()
        log.info("pretrained init: val accuracy %.4f loss %.4f (%.0f s)", scores.accuracy, scores.loss, result.seconds)
    for epoch, path in staged.items():
        os.replace(path, epoch_paths[epoch])
    if staging.exists() and not any(staging.iterdir()):
        staging.rmdir()
    save_checkpoint(model.state_dict(), out_model, meta)
    _forget(resume_path)


def _resume(config: dict[str, Any], path: Path, start_file: str):
    """Where a job keeps its training state; the state is valid only for this model config and this exact
    starting file (the init checkpoint of a fine-tune, the data of pretraining): a retrained init or
    re-prepared data discards it instead of resuming stale work."""

    remove_orphan_temps(path)
    start = json.dumps({"model": config["model"], "start_file_sha256": file_digest(start_file)}, sort_keys=True)
    return Resume(str(path), int(config["training"]["checkpoint_every_steps"]), start)


def _forget(path: Path) -> None:
    """Remove a training state (and the log history kept beside it) once the outputs it led to are in place."""
    for stale in (path, history_of(path)):
        stale.unlink(missing_ok=True)


def history_of(resume_path: Path) -> Path:
    """The log of a resumable job's earlier attempts, kept beside its training state: Snakemake deletes the
    log of an incomplete job before rerunning it, this copy survives and is written back at the top."""
    return resume_path.with_suffix(".log")


# ---------------------------------------------------------------- one fine-tune
def _epoch_keeper(out: Path, model_config: dict[str, Any], data: PreparedData, epochs: int):
    """An ``on_epoch_end`` that saves every epoch's weights but the last (the run's own checkpoint)."""
    def keep(epoch: int, model: torch.nn.Module) -> None:
        if epoch < epochs:
            meta = checkpoint_metadata(model_config, data, epoch=str(epoch))
            save_checkpoint(model.state_dict(), out / "epochs" / f"epoch_{epoch:03d}.safetensors", meta)
    return keep


def _epoch_table(run_id: str, out: Path, evaluator: Evaluator, ok: bool) -> pa.Table:
    """Val scores of the epoch checkpoints a fine-tune kept (none for a run that is not ok)."""
    rows = []
    for path in sorted((out / "epochs").glob("epoch_*.safetensors")) if ok else []:
        scores = evaluator.scores(load_checkpoint(path))
        rows.append({"run_id": run_id, "epoch": int(path.stem.split("_")[1]), "path": f"epochs/{path.name}",
                     "val_accuracy": scores.accuracy, "val_loss": scores.loss})
    return pa.Table.from_pylist(rows, schema=EPOCH_SCHEMA)


def finetune(config: dict[str, Any], run_id: str, hp: dict[str, Any], data_path: str, init_path: str,
             out_dir: str, threads: int = 1, epochs_table: str | None = None) -> dict[str, Any]:
    """Fine-tune one configuration from the shared init; write its checkpoint, logits, metrics and config.

    A run whose loss stops being finite is recorded with ``status=diverged``, one whose training raises with
    ``status=failed`` (and the error); both are left out of soups, and their outputs are still written so the
    rest of the workflow completes. A kill (signal, SLURM time limit) is not a failure: the job exits and its
    rerun resumes from the saved training state. With ``epochs_table``, every epoch but the last is also kept
    as ``epochs/epoch_NNN.safetensors`` and listed with its val scores (soups with ``ingredients: epochs``).
    """

    set_threads(threads)
    hp = {name: hp.get(name) for name in HYPERPARAMETERS} | hp  # every hp_* column in every run's row
    out = Path(out_dir)
    data, model_config = PreparedData(data_path), config["model"]
    device = pick_device(config["evaluation"]["device"])
    model = model_for(data, model_config)
    model.load_state_dict(load_checkpoint(init_path))
    seeded = {**hp, "seed": pipeline_seed(config, hp["seed"])}  # the row keeps the run's own seed
    images, labels = subset(*data.split("train"), hp["data_fraction"], seeded["seed"])
    log.info("fine-tune %s on %d images, %s: %s", run_id, labels.numel(), device, json.dumps(hp))
    error = ""
    try:
        keep = _epoch_keeper(out, model_config, data, int(hp["epochs"])) if epochs_table else None
        result = train(model, images, labels, data, seeded, device, name=run_id, on_epoch_end=keep,
                       resume=_resume(config, out / "resume.pt", init_path), precision=config["training"]["precision"])
    except (Preempted, KeyboardInterrupt) + INFRASTRUCTURE_ERRORS:
        raise  # killed, disk full, I/O, out of memory: the job fails and a rerun retries (resuming saved state)
    except Exception as failure:  # a run that cannot train (bad hyperparameters, ...) is a result too
        log.exception("%s failed; recorded with status=failed and left out of soups", run_id)
        error = f"{type(failure).__name__}: {failure}"[:500]
        model.load_state_dict(load_checkpoint(init_path))
        result = TrainResult("failed", 0, 0, 0.0, 0.0, float("nan"))
    row: dict[str, Any] = {"run_id": run_id, **{f"hp_{k}": v for k, v in hp.items()}, "status": result.status,
                           "error": error, "resumed_from_step": result.resumed_from_step,
                           "epochs_done": result.epochs_done, "train_loss": result.train_loss,
                           "train_seconds": result.seconds, "train_images_per_second": result.images_per_second,
                           "n_parameters": count_parameters(model), "device": device.type}
    logits = {}
    for split in ("val", "test"):
        evaluator = Evaluator(model, data, split, device, config["evaluation"]["batch_size"])
        split_logits, features = evaluator.outputs(features=True)
        scores = scores_from_logits(split_logits, evaluator.labels)
        if result.status == "ok" and not torch.isfinite(split_logits).all():
            row["status"] = "diverged"
        row[f"{split}_accuracy"], row[f"{split}_loss"] = scores.accuracy, scores.loss
        logits[f"{split}_logits"], logits[f"{split}_features"] = split_logits, features
    if result.status == "failed":  # the scores above are the init's: do not let them pass for the run's
        row.update({f"{split}_{name}": float("nan") for split in ("val", "test") for name in ("accuracy", "loss")})
    log.info("%s: status %s, val accuracy %.4f, test accuracy %.4f, %.0f s", run_id, row["status"],
             row["val_accuracy"], row["test_accuracy"], result.seconds)
    meta = checkpoint_metadata(model_config, data, run_id=run_id, status=row["status"])
    save_checkpoint(model.state_dict(), out / "model.safetensors", meta)
    atomic_save_safetensors(logits, out / "outputs.safetensors")
    atomic_write_yaml({"run_id": run_id, "hyperparameters": hp, "model": model_config,
                       "data": config["data"]["name"], "init": init_path}, out / "config.yaml")
    atomic_write_parquet(history_table(run_id, result.history), out / "history.parquet")
    if epochs_table:
        val = Evaluator(model, data, "val", device, config["evaluation"]["batch_size"])
        atomic_write_parquet(_epoch_table(run_id, out, val, row["status"] == "ok"), epochs_table)
    atomic_write_parquet(run_table([row]), out / "metrics.parquet")
    _forget(out / "resume.pt")
    return row


# ---------------------------------------------------------------- tables
def concat_parquet(paths: list[str], out: str) -> pd.DataFrame:
    """One table from many one-job tables (runs, soups, traces), written atomically; parts that share a
    schema (every run's, see ``tables.RUN_SCHEMA``) keep it exactly."""

    tables = [t for t in (pq.read_table(p) for p in paths) if t.num_rows]
    if tables and all(t.schema.equals(tables[0].schema) for t in tables):
        table = pa.concat_tables(tables)
        atomic_write_parquet(table, out)
        return table.to_pandas()
    frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True) if tables else pd.DataFrame()
    atomic_write_parquet(frame, out)
    return frame
