"""Where the files of the prepared data, the init, a fine-tune and a soup live: the one place their names are
spelt. The rules declare their outputs with these functions (a folder with wildcards in it), each job's typed
record of paths takes them by field name, and the calibration harness and the tests lay out folders of their
own with the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

RESULTS = "results"


def _subfolder(name: str) -> property:
    return property(lambda self: f"{self.pipeline}/{name}", doc=f"the pipeline's {name}/ folder")


@dataclass(frozen=True)
class Folders:
    """The folders of one pipeline (``results/``, or a replicate's folder; the rules pass ``{pipeline}`` when
    there are replicates).
    A run's folder under ``runs`` is named by its id (``soupflow.plan.grid.run_id``)."""

    pipeline: str
    data = _subfolder("data")
    init = _subfolder("init")
    runs = _subfolder("runs")
    soups = _subfolder("soups")
    pool = _subfolder("pool")
    shift = _subfolder("shift")
    metrics = _subfolder("metrics")
    plots = _subfolder("plots")
    logs = _subfolder("logs")


MAIN = Folders(RESULTS)
RUNS, SOUPS, INIT, DATA = MAIN.runs, MAIN.soups, MAIN.init, MAIN.data
#: the pipelines of ``replicates`` other than the top-level seed's (which stays in ``results/``)
REPLICATES = f"{RESULTS}/replicates"


def pipeline_folder(seed: int, main_seed: int) -> str:
    """Where one replicate's whole pipeline (data, init, runs, soups, metrics) lives: ``results/`` for the
    top-level seed — the same paths as without ``replicates`` — and ``results/replicates/<seed>`` otherwise."""
    return RESULTS if seed == main_seed else f"{REPLICATES}/{seed}"


def data_files(folder: str = DATA, data_format: str = "tensors") -> dict[str, str]:
    """The prepared data set (its decoded tensors, or the list of its image files: ``data.format``) and its
    written-down split (rule prepare_data)."""
    data = f"{folder}/dataset.safetensors" if data_format == "tensors" else f"{folder}/files.parquet"
    return {"data": data, "splits": f"{folder}/splits.json"}


def init_file(folder: str = INIT) -> str:
    """The weights every fine-tune starts from (rule init)."""
    return f"{folder}/model.safetensors"


def pretrained_file(model_name: str) -> str:
    """timm's hub weights of ``model.name`` (``model.init: timm``), fetched once for every pipeline on the
    machine that runs Snakemake (rule pretrained_weights); named by the name, pretrained tag included."""
    return f"{RESULTS}/pretrained/{model_name}.safetensors"


def epoch_file(folder: str, epoch: int) -> str:
    """A kept epoch's checkpoint: of the pretraining (``results/init``) or of a fine-tune (its ``epochs/``)."""
    return f"{folder}/epoch_{int(epoch):03d}.safetensors"


def run_files(folder: str, keep_epochs: bool = False, ema: bool = False) -> dict[str, str]:
    """Every file one fine-tune writes (rule finetune; ``soupflow.jobs.finetune.RunPaths``). ``epochs``, the
    table of its kept epoch checkpoints, only when a soup takes ``ingredients: epochs``; ``ema``, the moving
    average of its weights, only when a run of the grid has ``ema_decay`` (the rule's outputs are every run's)."""
    files = {"model": f"{folder}/model.safetensors", "outputs": f"{folder}/outputs.safetensors",
             "history": f"{folder}/history.parquet", "metrics": f"{folder}/metrics.parquet",
             "config": f"{folder}/config.yaml"}
    files |= {"epochs": f"{folder}/epochs.parquet"} if keep_epochs else {}
    return files | ({"ema": f"{folder}/ema.safetensors"} if ema else {})


def pool_files(folder: str) -> dict[str, str]:
    """What scoring one outside checkpoint writes (rule pool_checkpoint; ``soupflow.jobs.pool.PoolPaths``): a
    fine-tune's files that the runs table lists, named as a run's, so that soups read both alike."""
    files = run_files(folder)
    return {kind: files[kind] for kind in ("model", "outputs", "metrics")}


def run_board(folder: str) -> str:
    """Where a training job writes its TensorBoard event files (a run's folder, or the init's): never an output,
    so that its absence reruns nothing (``tensorboard --logdir results/`` shows the grid as it trains)."""
    return f"{folder}/tb"


def run_log(folder: str) -> str:
    return f"{folder}/train.log"


def soup_files(folder: str) -> dict[str, str]:
    """Every file one soup job writes (rule soup; ``soupflow.jobs.soup.SoupPaths``)."""
    return {"model": f"{folder}/model.safetensors", "metrics": f"{folder}/metrics.parquet",
            "trace": f"{folder}/trace.parquet", "outputs": f"{folder}/outputs.safetensors"}


#: the figures of rule plots: {output name: file stem}; each has its report caption in
#: ``workflow/report/<stem>.rst`` (``soupflow.report.figures.plot_all`` draws them by output name)
PLOTS = {"soups": "soups_vs_ingredients", "heatmap": "val_heatmap", "greedy": "greedy_ingredients",
         "pruned": "pruned_passes", "wise_ft": "wise_ft"}


def plot_files(folder: str) -> dict[str, str]:
    """Every figure rule plots draws, by output name (``PLOTS``)."""
    return {name: f"{folder}/{stem}.png" for name, stem in PLOTS.items()}


def shift_data_file(folder: str, streamed: bool) -> str:
    """A shift set prepared (rule prepare_shift, one folder per set): the listing of its images when they are
    ``streamed`` (an image folder with data.format files), else its decoded tensors, as ``data_files`` names them."""
    return data_files(folder, "files" if streamed else "tensors")["data"]


def shift_files(metrics: str, plots: str) -> dict[str, str]:
    """What scoring the shift sets writes: each set's scores (rule shift_scores, ``{shift}`` in the name), their
    table (rule shift_table) and its figure (rule shift_plot)."""
    return {"scores": f"{metrics}/shift/{{shift}}.parquet", "table": f"{metrics}/shift.parquet",
            "figure": f"{plots}/shift.png"}


def learning_curves_file(folder: str) -> str:
    """Rule learning_curves' figure (its report caption: ``workflow/report/learning_curves.rst``)."""
    return f"{folder}/learning_curves.png"


def runs_table(folder: str = f"{RESULTS}/metrics") -> str:
    """Every run's metrics and the paths of its files (rule run_table): the soups' list of ingredients."""
    return f"{folder}/runs.parquet"


#: the weights files timm's ``local-dir:<folder>`` reads, in the order it looks for them (soupflow writes the first)
LOCAL_DIR_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_config(checkpoint: str) -> str:
    """timm's ``config.json`` beside a checkpoint (``local-dir:`` loads the folder)."""
    return f"{checkpoint.rsplit('/', 1)[0]}/config.json"


def pooled_files(folder: str = RESULTS) -> dict[str, str]:
    """Each soup against the best individual pooled over the replicates (rule pooled): table, text, figure."""
    return {"table": f"{folder}/metrics/pooled.parquet", "text": f"{folder}/pooled.txt",
            "figure": f"{folder}/plots/replicates.png"}


class FolderFiles:
    """A record whose fields are the files of one folder, each named by its field through ``PATTERN``."""

    PATTERN: ClassVar[str]  # ``{folder}`` and ``{name}`` (the field's)

    @classmethod
    def under(cls, folder: str) -> "FolderFiles":
        return cls(**{f.name: cls.PATTERN.format(folder=folder, name=f.name) for f in fields(cls)})

    def files(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class AnalysisTables(FolderFiles):
    """The analysis' Parquet tables (rule analysis, ``soupflow.jobs.analysis.analyse``): ``<field>.parquet``."""

    PATTERN = "{folder}/{name}.parquet"

    pairs: str
    correlations: str
    triplets: str
    transitivity: str
    embedding: str
    robustness: str
    shared_training: str
    headline: str


@dataclass(frozen=True)
class AnalysisPlots(FolderFiles):
    """The analysis' figures (``soupflow.report.analysis_figures``): ``plots/<field>.png``, each with its report
    caption in ``workflow/report/analysis/<field>.rst``. The rule names them ``<field>_png``."""

    PATTERN = "{folder}/plots/{name}.png"

    similarity: str
    similarity_positive: str
    transitivity: str
    embedding: str
    shared_training: str
    corrupted: str


def analysis_tables(folder: str) -> dict[str, str]:
    """Rule analysis' tables by output name."""
    return AnalysisTables.under(folder).files()


def analysis_plots(folder: str) -> dict[str, str]:
    """Rule analysis' figures by output name (``<figure>_png``)."""
    return {f"{name}_png": path for name, path in AnalysisPlots.under(folder).files().items()}
