"""Where the files of the prepared data, the init, a fine-tune and a soup live: the one place their names are
spelt. The rules declare their outputs with these functions (a folder with wildcards in it), each job's typed
record of paths takes them by field name, and the calibration harness and the tests lay out folders of their
own with the same functions.
"""

from __future__ import annotations

RESULTS = "results"
#: a run's folder under ``results/runs``: ``soupflow.plan.grid.run_id`` makes the ids
RUNS = f"{RESULTS}/runs"
SOUPS = f"{RESULTS}/soups"
INIT = f"{RESULTS}/init"
DATA = f"{RESULTS}/data"


def data_files(folder: str = DATA, data_format: str = "tensors") -> dict[str, str]:
    """The prepared data set (its decoded tensors, or the list of its image files: ``data.format``) and its
    written-down split (rule prepare_data)."""
    data = f"{folder}/dataset.safetensors" if data_format == "tensors" else f"{folder}/files.parquet"
    return {"data": data, "splits": f"{folder}/splits.json"}


def init_file(folder: str = INIT) -> str:
    """The weights every fine-tune starts from (rule init)."""
    return f"{folder}/model.safetensors"


def epoch_file(folder: str, epoch: int) -> str:
    """A kept epoch's checkpoint: of the pretraining (``results/init``) or of a fine-tune (its ``epochs/``)."""
    return f"{folder}/epoch_{int(epoch):03d}.safetensors"


def run_files(folder: str, keep_epochs: bool = False) -> dict[str, str]:
    """Every file one fine-tune writes (rule finetune; ``soupflow.jobs.finetune.RunPaths``). ``epochs``, the
    table of its kept epoch checkpoints, only when a soup takes ``ingredients: epochs``."""
    files = {"model": f"{folder}/model.safetensors", "outputs": f"{folder}/outputs.safetensors",
             "history": f"{folder}/history.parquet", "metrics": f"{folder}/metrics.parquet",
             "config": f"{folder}/config.yaml"}
    return {**files, "epochs": f"{folder}/epochs.parquet"} if keep_epochs else files


def run_log(folder: str) -> str:
    return f"{folder}/train.log"


def soup_files(folder: str) -> dict[str, str]:
    """Every file one soup job writes (rule soup; ``soupflow.jobs.soup.SoupPaths``)."""
    return {"model": f"{folder}/model.safetensors", "metrics": f"{folder}/metrics.parquet",
            "trace": f"{folder}/trace.parquet"}


def runs_table(folder: str = f"{RESULTS}/metrics") -> str:
    """Every run's metrics and the paths of its files (rule run_table): the soups' list of ingredients."""
    return f"{folder}/runs.parquet"


def timm_config(checkpoint: str) -> str:
    """timm's ``config.json`` beside a checkpoint (``local-dir:`` loads the folder)."""
    return f"{checkpoint.rsplit('/', 1)[0]}/config.json"
