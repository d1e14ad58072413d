"""The init job: the weights every fine-tune starts from — pretrained here, imported from a file, or timm's
own pretrained weights — and the kept epochs of pretraining (branch points of the analysis)."""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from soupflow.core.batchnorm import BatchNormRefresher
from soupflow.core.board import add_scalars
from soupflow.core.distributed import world
from soupflow.core.models import checkpoint_metadata, has_batchnorm, load_checkpoint, save_checkpoint, set_threads
from soupflow.core.pretext import PRETEXT_TASKS, fresh_head, uses_labels
from soupflow.core.probe import linear_probe
from soupflow.core.resume import forget, job_resume, state_beside
from soupflow.core.train import TensorSource, TrainingOptions, fine_tuning_source, train, train_source
from soupflow.core.weights import import_state
from soupflow.jobs.context import JobContext
from soupflow.jobs.launch import Launch, devices_per_run, launch
from soupflow.plan.catalog import BN_IMAGES, Hyperparameters
from soupflow.plan.layout import run_board
from soupflow.plan.model_file import resolve_file
from soupflow.plan.seeds import pipeline_seed

log = logging.getLogger("soupflow")


@dataclass(frozen=True)
class InitPaths:
    """What the init rule names: the data it reads, the init checkpoint, and the checkpoints of the kept
    epochs of pretraining (epoch → path; the rule keeps ``config.kept_epochs``)."""

    data: str
    model: str
    epochs: dict[int, str] = field(default_factory=dict)
    pretrained: str | None = None  # model.init: timm: the hub weights rule pretrained_weights fetched


def init_board(paths: InitPaths, part: str) -> str:
    """Where a training of the init job (``pretrain``, ``shared_finetune``) writes its TensorBoard scalars:
    ``init/tb/<part>`` (``soupflow.plan.layout.run_board``; never an output)."""
    return f"{run_board(str(Path(paths.model).parent))}/{part}"


def _timm_pretrained(context: JobContext, fetched: str | None = None) -> torch.nn.Module:
    """timm's own pretrained weights: from ``model.file`` (a timm-format checkpoint, offline), from the file
    rule pretrained_weights fetched on the submitting machine (``fetched``: offline here), or, for an
    ``hf-hub:`` name, from the hub.

    timm adapts the input channels and re-creates a head of another size itself (``load_pretrained``).
    """
    model_config = context.config["model"]
    file = resolve_file(model_config["file"]) if model_config["file"] else fetched
    overlay = {"file": file} if file else None
    try:
        return context.model(pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as error:  # network errors surface as many exception types
        where = (f"model.file {model_config['file']!r}" if model_config["file"] else
                 f"the fetched weights {fetched}" if fetched else "the Hugging Face hub")
        raise RuntimeError(
            f"could not load timm weights for {model_config['name']!r} from {where} ({type(error).__name__}: "
            f"{error}). model.init: timm needs network access to the hub, a filled HF cache, or model.file "
            "naming a timm-format checkpoint; offline, use model.init: pretrain or model.init: file") from None


def _imported(model: torch.nn.Module, model_config: dict[str, Any], meta: dict[str, str]) -> None:
    """``model.init: file``: load a checkpoint of another layout into ``model`` (``weights.import_state``)."""
    fitted, report = import_state(model, load_checkpoint(resolve_file(model_config["file"])), model_config["file"],
                                  model_config["match"], model_config.get("rename"))
    model.load_state_dict(fitted)
    log.info("imported %s: %s (fresh tensors seeded with model.head_seed %s)", model_config["file"],
             report.summary(), model_config["head_seed"])
    meta.update(report.metadata())


def _pretrain(context: JobContext, model: torch.nn.Module, paths: InitPaths, keep) -> None:
    """Pretrain ``model`` in place on the configured task; ``keep(epoch, model, head)`` saves branch points.
    A pretext task (not labels) ends with a fresh head, so fine-tunes learn the real classes from scratch."""
    config, data = context.config, context.data
    task = config["pretrain"]["task"]
    hp = Hyperparameters.of_section(config["pretrain"])  # nesterov, no smoothing, 30 % warm-up: the defaults
    hp = replace(hp, seed=pipeline_seed(config, hp.seed))
    if uses_labels(task):
        source = train_source(data, "pretrain", hp)
    else:  # a pretext task turns the images in memory (data.format tensors: checked at parse time)
        source = TensorSource.of(*PRETEXT_TASKS[task](*data.split("pretrain")), hp)
    head = {} if uses_labels(task) else fresh_head(model, pipeline_seed(config, config["model"]["head_seed"]))
    if head:
        log.info("pretraining on the %s pretext task (%d images); fine-tunes get a fresh head: %s",
                 task, source.size, ", ".join(head))
    learner = model
    if getattr(data, "pretrain_classes", None):  # few-label transfer: pretrain with a head of its own classes
        learner, head = _pretraining_twin(model, config["model"], data)
        log.info("pretraining on %d images of the classes %s; fine-tunes get the seeded head of %s",
                 source.size, ", ".join(data.pretrain_classes), ", ".join(data.classes))
    result = train(learner, source, data, hp, context.device, name="pretrain",
                   on_epoch_end=lambda epoch, trained: keep(epoch, trained, head),
                   resume=job_resume(config, state_beside(paths.model), paths.data),
                   options=TrainingOptions.of(config["training"]), tensorboard=init_board(paths, "pretrain"))
    if result.status != "ok":
        raise RuntimeError("pretraining diverged; lower pretrain.lr")
    model.load_state_dict({**learner.state_dict(), **head})
    scores = context.evaluator("val", model=model).scores()
    add_scalars(init_board(paths, "pretrain"), result.steps, {"val/accuracy": scores.accuracy})
    log.info("pretrained init: val accuracy %.4f loss %.4f (%.0f s)", scores.accuracy, scores.loss, result.seconds)


def _pretraining_twin(model: torch.nn.Module, model_config: dict[str, Any], data) -> tuple[torch.nn.Module, dict]:
    """The model to pretrain on other classes than the fine-tunes': ``model``'s weights with a head sized to
    the pretraining classes (timm's ``reset_classifier``), and ``model``'s own seeded head of the fine-tuning
    classes, which every kept epoch and the init carry instead (as a pretext task's fresh head)."""
    classifier = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is classifier)
    head = {f"{prefix}.{key}": value.clone() for key, value in classifier.state_dict().items()}
    twin = copy.deepcopy(model)
    twin.reset_classifier(len(data.pretrain_classes))
    return twin, head


def _started(context: JobContext, meta: dict[str, str], fetched: str | None = None) -> torch.nn.Module:
    """The model before any pretraining: timm's weights, a file's, or a seeded fresh model; BatchNorm
    statistics re-estimated on train images with ``model.init_bn: recompute``."""
    config, model_config = context.config, context.config["model"]
    torch.manual_seed(pipeline_seed(config, model_config["head_seed"]))
    model = _timm_pretrained(context, fetched) if model_config["init"] == "timm" else context.model()
    if model_config["init"] == "file":
        _imported(model, model_config, meta)
    if model_config["init_bn"] == "recompute" and has_batchnorm(model):
        refresher = BatchNormRefresher(model, context.data, context.device, BN_IMAGES, pipeline_seed(config, 0),
                                       context.bn_batch_size())
        model.load_state_dict(refresher.refresh(model.state_dict()))
        log.info("BatchNorm statistics of the init re-estimated on %d train images (model.init_bn: recompute)",
                 refresher.images.shape[0])
    return model


def _probe(context: JobContext, model: torch.nn.Module, meta: dict[str, str]) -> None:
    """``model.linear_probe``: fit the head to the train images' frozen features (LP-FT, ``soupflow.core.probe``)."""
    model_config = context.config["model"]
    if has_batchnorm(model) and model_config["init"] != "pretrain" and model_config["init_bn"] != "recompute":
        log.warning("model.linear_probe fits the head to features under the file's BatchNorm statistics, which "
                    "training mode replaces by batch statistics; with weights from another domain set "
                    "model.init_bn: recompute so that both agree")
    result = linear_probe(model, context.data, context.device, pipeline_seed(context.config, model_config["head_seed"]))
    meta.update(result.metadata())
    scores = context.evaluator("val", model=model).scores()
    log.info("linear probe of the head on %d train images: L2 %g, held-out train accuracy %.4f; init val "
             "accuracy %.4f", result.images, result.weight_decay, result.held_out_accuracy, scores.accuracy)


def shared_resume_state(model_file: str) -> Path:
    """Where the shared fine-tune keeps its training state: beside pretraining's, not over it (a job preempted
    during the shared fine-tune resumes pretraining at its end, then this)."""
    return state_beside(model_file).with_name("resume_shared.pt")


def _shared_finetune(context: JobContext, model: torch.nn.Module, paths: InitPaths) -> None:
    """``model.shared_finetune``: train ``model`` in place on the fine-tuning images before the runs branch
    ("Too Salty"'s shared training), with the finetune section's settings at the given epochs and lr."""
    config = context.config
    shared = config["model"]["shared_finetune"]
    hp = Hyperparameters.of(config["finetune"])
    hp = replace(hp, epochs=shared["epochs"], lr=shared["lr"], seed=pipeline_seed(config, hp.seed))
    source = fine_tuning_source(context.data, hp)
    log.info("shared fine-tune of the init on %d images: %d epochs at lr %g", source.size, hp.epochs, hp.lr)
    result = train(model, source, context.data, hp, context.device, name="shared fine-tune",
                   resume=job_resume(config, shared_resume_state(paths.model), paths.data),
                   options=TrainingOptions.of(config["training"]), tensorboard=init_board(paths, "shared_finetune"))
    if result.status != "ok":
        raise RuntimeError("the shared fine-tune diverged; lower model.shared_finetune.lr")
    scores = context.evaluator("val", model=model).scores()
    add_scalars(init_board(paths, "shared_finetune"), result.steps, {"val/accuracy": scores.accuracy})
    log.info("shared fine-tune: init val accuracy %.4f loss %.4f (%.0f s)", scores.accuracy, scores.loss, result.seconds)


def make_init(config: dict[str, Any], paths: InitPaths, threads: int = 1) -> None:
    """Produce the weights every fine-tune starts from: pretrained here, read from a file, or from timm's hub.

    All fine-tunes share this checkpoint *including the classifier head*: heads re-initialised per run
    with different seeds would put runs in different basins and break averaging.
    """
    if devices_per_run(config) > 1 and world().size == 1 and config["model"]["init"] == "pretrain":
        launch(Launch(make_init, config, (paths,), threads), Path(paths.model).parent)
        return
    set_threads(threads)
    context = JobContext.open(config, paths.data, threads, training=True)
    meta = checkpoint_metadata(config["model"], context.data, init=config["model"]["init"])
    model = _started(context, meta, paths.pretrained)
    # Kept epochs go to a staging folder first and are moved into place only when pretraining finished:
    # Snakemake deletes the outputs of a failed job, and a resumed job cannot re-save past epochs.
    staging = Path(paths.model).parent / ".staging"
    staged = {epoch: staging / Path(path).name for epoch, path in paths.epochs.items()}
    if 0 in staged and not staged[0].exists() and world().main:
        save_checkpoint(model.state_dict(), staged[0], {**meta, "epoch": "0"})

    def keep(epoch: int, trained: torch.nn.Module, head: dict[str, torch.Tensor]) -> None:
        if epoch in staged:
            save_checkpoint({**trained.state_dict(), **head}, staged[epoch], {**meta, "epoch": str(epoch)})

    if config["model"]["init"] == "pretrain":
        _pretrain(context, model, paths, keep)
    if not world().main:
        return  # process 0 finishes the init and writes it
    if config["model"]["linear_probe"]:
        _probe(context, model, meta)
    if config["model"]["shared_finetune"]:
        _shared_finetune(context, model, paths)
        meta["shared_finetune"] = json.dumps(config["model"]["shared_finetune"], sort_keys=True)
    for epoch, path in staged.items():
        os.replace(path, paths.epochs[epoch])
    if staging.exists() and not any(staging.iterdir()):
        staging.rmdir()
    save_checkpoint(model.state_dict(), paths.model, meta)
    forget(state_beside(paths.model))
    forget(shared_resume_state(paths.model))
