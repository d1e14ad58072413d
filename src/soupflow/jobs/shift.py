"""Jobs: test sets under distribution shift (``data.shift_sets``). Each set is prepared as data of its own with
one split, ``test``, in the experiment's classes, image size and normalisation (rule prepare_shift); then every
usable run, every soup and the ensemble of the runs are scored on it (rule shift_scores), each against the best
run by val with a paired interval, beside the same comparison on the in-distribution test split: whether a soup's
gain grows or vanishes under shift, as Wortsman et al. and WiSE-FT report it does for CLIP fine-tunes.

Adding a set prepares and scores only that set; a new run or soup rescores each set (inference only)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from soupflow.core.evaluate import scores_from_logits
from soupflow.core.models import load_checkpoint, set_threads
from soupflow.core.stats import compare
from soupflow.jobs.context import JobContext
from soupflow.jobs.corrupted import make_corrupted
from soupflow.plan.catalog import CORRUPTED_SHIFT
from soupflow.store.data import TensorData, decode_images
from soupflow.store.datasets import open_data
from soupflow.store.files import TABLE_SCHEMA, FileData, list_folder
from soupflow.store.io import atomic_save_safetensors, atomic_write_parquet, open_safetensors, read_tensors
from soupflow.store.tables import best_run

log = logging.getLogger("soupflow")

#: the split a prepared shift set holds (``TensorData``/``FileData`` read it as the test split of the data)
SHIFT_SPLIT = "test"


def prepare_shift(config: dict[str, Any], source: str, data_path: str, out_path: str) -> int:
    """Prepare one shift set: ``corruptions`` (the test split corrupted as ``analysis.corruptions`` says), or an
    image folder of class folders, listed (files format) or decoded at the data's image shape (tensors). Its
    classes must be the training classes (a DataError names the others). The number of its images."""
    if source == CORRUPTED_SHIFT:
        make_corrupted(config["analysis"]["corruptions"], data_path, out_path, split=SHIFT_SPLIT)
        return len(TensorData(out_path).labels(SHIFT_SPLIT))
    data = open_data(data_path)
    listing = list_folder(os.path.abspath(source), "", classes=data.classes)
    if isinstance(data, FileData):
        columns = {"split": [SHIFT_SPLIT] * len(listing), **listing.rows}
        meta = {**data.meta, "root": os.path.abspath(source)}
        table = pa.table(columns, schema=TABLE_SCHEMA).replace_schema_metadata({"soupflow": json.dumps(meta)})
        atomic_write_parquet(table, out_path)
    else:
        images = torch.from_numpy(decode_images(source, listing.rows["path"], data.image_shape))
        meta = {"classes": json.dumps(data.classes), "mean": json.dumps(data.mean.flatten().tolist()),
                "std": json.dumps(data.std.flatten().tolist()), "source": os.path.abspath(source)}
        labels = torch.tensor(listing.rows["label"], dtype=torch.int64)
        atomic_save_safetensors({f"{SHIFT_SPLIT}_x": images, f"{SHIFT_SPLIT}_y": labels}, out_path, metadata=meta)
    log.info("shift set %s: %d images of %d classes (%d non-image files ignored)", source, len(listing),
             len(set(listing.rows["label"])), listing.skipped)
    return len(listing)


@dataclass(frozen=True)
class ShiftInputs:
    """What rule shift_scores reads: the prepared shift set, the experiment's prepared data (its test labels),
    the runs table (each run's model and cached test logits) and each soup's model and saved test outputs."""

    shift: str
    data: str
    runs: str
    soup_models: list[str]
    soup_outputs: list[str]


@dataclass(frozen=True)
class Scored:
    """One model of the comparison: its kind (run, soup, ensemble), name, recipe, test and shift logits."""

    kind: str
    name: str
    recipe: str
    test_logits: torch.Tensor
    shift_logits: torch.Tensor


def score_shift(config: dict[str, Any], shift_set: str, inputs: ShiftInputs, out_path: str,
                threads: int = 1) -> pd.DataFrame:
    """Score every usable run, every soup and the runs' ensemble on the shift set ``inputs.shift`` and write
    their rows (``shift_row``): nothing but the schema when no run is usable."""
    set_threads(threads)
    runs = pd.read_parquet(inputs.runs)
    best = best_run(runs)
    if best is None:
        atomic_write_parquet(pd.DataFrame(columns=["shift_set", "kind", "model"]), out_path)
        return pd.DataFrame()
    context = JobContext.open(config, inputs.shift, threads)
    evaluator = context.evaluator(SHIFT_SPLIT)
    labels = context.data.labels(SHIFT_SPLIT)
    test_labels = open_data(inputs.data).labels("test")

    def shifted(model_path: str) -> torch.Tensor:
        return evaluator.logits(load_checkpoint(model_path, context.device)).cpu()

    usable = runs[runs["status"] == "ok"]
    models = [Scored("run", row.run_id, "", *read_tensors(row.outputs_file, "test_logits"), shifted(row.model_file))
              for row in usable.itertuples()]
    reference = next(model for model in models if model.name == best.run_id)
    models.append(Scored("ensemble", f"ensemble of {len(models)} runs", "",
                         torch.stack([m.test_logits for m in models]).mean(0),
                         torch.stack([m.shift_logits for m in models]).mean(0)))
    for model_path, outputs_path in zip(inputs.soup_models, inputs.soup_outputs):
        with open_safetensors(outputs_path) as handle:
            meta, test_logits = handle.metadata(), handle.get_tensor("test_logits")
        models.append(Scored("soup", meta["soup"], meta["recipe"], test_logits, shifted(model_path)))
    rows = [shift_row(model, reference, test_labels, labels) | {"shift_set": shift_set, "best": model is reference}
            for model in models]
    table = pd.DataFrame(rows)
    atomic_write_parquet(table, out_path)
    for row in table.itertuples():
        log.info("%-24s test %.4f, %s %.4f (vs best %+.2f pt [%+.2f, %+.2f])", row.model, row.test_accuracy,
                 shift_set, row.shift_accuracy, row.shift_acc_diff_pt, row.shift_acc_diff_pt_low,
                 row.shift_acc_diff_pt_high)
    return table


def shift_row(model: Scored, reference: Scored, test_labels: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """One model's row: accuracy and loss on the test split and on the shift set, each paired against the best
    run's on the same images (``compare``: ``test_acc_diff_pt``…, ``shift_acc_diff_pt``…, bootstrap intervals,
    McNemar p) and whether the interval is above zero (``*_wins``: this pipeline's images only, no seeds)."""
    row: dict[str, Any] = {"kind": model.kind, "model": model.name, "recipe": model.recipe, "images": len(labels)}
    for split, logits, reference_logits, truth in (("test", model.test_logits, reference.test_logits, test_labels),
                                                   ("shift", model.shift_logits, reference.shift_logits, labels)):
        scores, comparison = scores_from_logits(logits, truth), compare(logits, reference_logits, truth)
        row |= {f"{split}_accuracy": scores.accuracy, f"{split}_loss": scores.loss, **comparison.columns(f"{split}_"),
                f"{split}_wins": comparison.wins}
    return row
