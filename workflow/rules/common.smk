# The resolved config, the expanded runs and the helpers the rules share (soupflow.plan: parse time, torch-free).
import inspect
import re
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(workflow.basedir) / "src")
)  # works with or without `pip install -e .`

from snakemake.common import overwrite_function_params
from snakemake.exceptions import WorkflowError

from soupflow.plan import layout
from soupflow.plan.catalog import RECIPES, SHIFT_NAME_PATTERN, soup_options
from soupflow.plan.config import resolve_config
from soupflow.plan.errors import ConfigError
from soupflow.plan.gpus import visible_gpus
from soupflow.plan.grid import (
    RUN_ID_PATTERN,
    expand_analysis_runs,
    expand_runs,
    sample_pairs,
)
from soupflow.plan.pool import POOL_ID_PATTERN, pool_checkpoints, pool_start
from soupflow.plan.params import (
    fetches_weights,
    image_folders,
    kept_epochs,
    pipelines,
    shift_set_folders,
    shift_streamed,
    soup_specs,
    tracked,
    untracked,
)
from soupflow.plan.versions import TRAINING as TRAINING_VERSION

try:  # model name and data paths are checked once, by the main process, not again inside every job
    CONFIG = resolve_config(
        config,
        check_model=workflow.is_main_process,
        check_paths=workflow.is_main_process,
        overrides=workflow.config_settings.config,  # --config: its nested values come as text
    )
except ConfigError as error:
    raise WorkflowError(f"invalid soupflow config: {error}") from None

# The pipelines: one per seed of `replicates` (the config with that top-level seed), in results/ for the
# top-level seed and results/replicates/<seed> for the others; without replicates, results/ alone. Every rule
# of a pipeline names its files under PIPELINE's folders; the analysis reads the top-level seed's.
PIPELINES = pipelines(CONFIG)  # {folder: that pipeline's config}
MAIN = layout.RESULTS
REPLICATED = CONFIG["replicates"] is not None
# The folders of one pipeline as path patterns of the rules: under the {pipeline} wildcard where there are
# several, plain results/ where there is one. A pattern that starts with a wildcard has no constant prefix, and
# Snakemake then tries every such output pattern of every rule on every file of the DAG; with results/ each
# file is tried on the few rules that write under its folder (bench/dag.py measures the parse).
SEVERAL_PIPELINES = len(PIPELINES) > 1
PIPELINE = layout.Folders("{pipeline}" if SEVERAL_PIPELINES else MAIN)


def pipeline_of(wildcards):
    """The folder of the job's pipeline: its {pipeline} wildcard, or results/ where there is one pipeline."""
    return wildcards.get("pipeline", MAIN)


# Every job's config: its pipeline's, resolved above, as a param Snakemake does not compare
# (soupflow.plan.params). Each rule's other params are what its outputs depend on: they are the rerun triggers.
RESOLVED = {folder: untracked(resolved) for folder, resolved in PIPELINES.items()}


def per_job(function):
    """An input, param or resource function that Snakemake calls for every job, its signature read once:
    Snakemake reads it twice per job and call otherwise (inspect.signature: ~0.25 s per function of the
    fine-tunes in a 10,000-point parse). The same mark Snakemake's own helpers (snakemake.ioutils) put on theirs.
    """
    overwrite_function_params(function, inspect.signature(function).parameters)
    return function


@per_job
def resolved(wildcards):
    """The config of the job's pipeline (the only config its job reads)."""
    return RESOLVED[pipeline_of(wildcards)]


# What each job's `config` param is: the one pipeline's config itself when there are no replicates (a
# constant costs Snakemake nothing per job), else `resolved`, which picks the job's pipeline.
JOB_CONFIG = resolved if SEVERAL_PIPELINES else RESOLVED[MAIN]


def replicate_seed(wildcards):
    """The top-level seed of the job's pipeline."""
    return PIPELINES[pipeline_of(wildcards)]["seed"]


def in_main(pattern):
    """A pipeline's path pattern in the top-level seed's pipeline (results/), its other wildcards kept."""
    return expand(pattern, pipeline=MAIN, allow_missing=True)[0]


def in_each(pattern, **wildcards):
    """A pipeline's path pattern in every pipeline (and every value of the other wildcards given)."""
    return expand(pattern, pipeline=PIPELINES, **wildcards)


RUNS = expand_runs(
    CONFIG
)  # {run_id: hyperparameters}: the experiment's fine-tunes, the soups' ingredients
ALL_RUNS = {
    **expand_analysis_runs(CONFIG),
    **RUNS,
}  # plus the analysis' branching runs (only `analysis` asks for them)
SOUPS = soup_specs(CONFIG)  # {soup name: the entry as written}
KEEP_EPOCHS = any(spec.get("ingredients") == "epochs" for spec in SOUPS.values())
# ema.safetensors is an output of every run once any run keeps a moving average of its weights (ema_decay):
# the rule's outputs are every run's (a run without one links its weights), so adding the first such run
# trains the others once more; without any, the runs' outputs are what they always were.
KEEP_EMA = any(hp.get("ema_decay") is not None for hp in ALL_RUNS.values())
KEPT_EPOCHS = kept_epochs(CONFIG)  # branch points of the pretraining (0 = before it)
# Outside checkpoints (config section pool): {pool id: its file}, scored by rule pool_checkpoint as runs are
POOL = pool_checkpoints(CONFIG)
POOL_START = pool_start(
    CONFIG
)  # θ0 of the pool's recipes that need one, or None (the init)

# GPUs: each model job asks for one when the machine has any, and a plain `snakemake --cores N` (no
# --resources gpu=…, no profile that sets it) may run as many such jobs at once as there are visible GPUs.
GPUS = visible_gpus()
GPU_JOB = 1 if GPUS else 0
if GPUS and "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", GPUS)
DEVICES = CONFIG["training"][
    "devices_per_run"
]  # processes of each fine-tune and of the pretraining
if GPUS and DEVICES > GPUS:
    raise WorkflowError(
        f"invalid soupflow config: config key 'training.devices_per_run' is {DEVICES}, "
        f"but this machine shows {GPUS} GPU(s); allowed: at most {GPUS}"
    )


@per_job
def gpus_per_run(wildcards):
    """The GPUs a training job takes: one per process where this machine has GPUs, and on a cluster (the
    nodes the SLURM profile asks for; `--set-resources finetune:gpu=0 init:gpu=0` trains on CPU nodes).
    """
    return DEVICES if GPUS or workflow.non_local_exec else 0


RESULTS = layout.RESULTS  # the top-level seed's pipeline, and the analysis' folders
RUN_FOLDER = f"{PIPELINE.runs}/{{run_id}}"  # one folder per run: model, outputs, metrics, config, train.log
POOL_FOLDER = f"{PIPELINE.pool}/{{pool_id}}"  # one folder per outside checkpoint: model, outputs, metrics


# Test sets under distribution shift (data.shift_sets): one folder per set, its scores in the metrics.
SHIFT_SETS = CONFIG["data"]["shift_sets"]
SHIFT_FOLDER = f"{PIPELINE.shift}/{{shift}}"
SHIFT = layout.shift_files(PIPELINE.metrics, PIPELINE.plots)


def shift_source(wildcards):
    """What a shift set is: an image folder, or `corruptions` (tracked: pointing a set elsewhere reprepares it)."""
    return SHIFT_SETS[wildcards.shift]


def shift_folders(wildcards):
    """A shift set's class folders, the inputs of its preparation (adding an image reprepares the set)."""
    return shift_set_folders(SHIFT_SETS[wildcards.shift])


def shift_corruptions(wildcards):
    """The corruptions a `corruptions` shift set applies (analysis.corruptions), or None for an image folder."""
    return (
        CONFIG["analysis"]["corruptions"]
        if SHIFT_SETS[wildcards.shift] == "corruptions"
        else None
    )


def shift_data(wildcards):
    """A prepared shift set: its tensors (prepare_shift), or the listing of its streamed files (prepare_shift_listing)."""
    streamed = shift_streamed(SHIFT_SETS[wildcards.shift], CONFIG["data"]["format"])
    folder = SHIFT_FOLDER.format(pipeline=pipeline_of(wildcards), shift=wildcards.shift)
    return layout.shift_data_file(folder, streamed)


def pool_file(wildcards):
    """The file an outside checkpoint comes from (rule pool_checkpoint's input)."""
    return POOL[wildcards.pool_id].file


def run_table_files(name):
    """One of the runs table's file columns for every row: the grid's runs, then the outside checkpoints (whose
    moving average, were one asked for, is their own weights)."""
    runs = expand(getattr(rules.finetune.output, name), run_id=RUNS, allow_missing=True)
    pooled = "model" if name == "ema" else name
    return runs + expand(
        getattr(rules.pool_checkpoint.output, pooled), pool_id=POOL, allow_missing=True
    )


# One soup's files (soupflow.jobs.soup.SoupPaths), as a pattern; rule soups writes them for every soup.
SOUP_FILES = layout.soup_files(f"{PIPELINE.soups}/{{soup}}")


def each_soup(name, **wildcards):
    """One of a soup's files (model, metrics, trace, outputs) for every soup of the config, in its order."""
    return expand(SOUP_FILES[name], soup=SOUPS, allow_missing=True, **wildcards)


def soups_inputs(wildcards):
    """The soups' inputs: the data, the runs table, and the init when a recipe starts from it."""
    inputs = {
        "data": rules.prepare_data.output.data,
        "runs": rules.run_table.output[0],
    }
    if any(RECIPES[spec["recipe"]].needs_start for spec in SOUPS.values()):
        inputs["start"] = POOL_START or rules.init.output.model
    return inputs


@per_job
def init_of(wildcards):
    """The checkpoint a run starts from: the shared init, or a branch point of the pretraining."""
    branch = ALL_RUNS[wildcards.run_id].get("branch_epoch")
    if branch is None:
        return rules.init.output.model
    return rules.init.output.epochs[KEPT_EPOCHS.index(branch)]


def run_start():
    """The finetune rule's `init` input: the shared init as a path when no run branches off the pretraining,
    else `init_of` (an input function costs Snakemake a signature inspection per job and call).
    """
    branches = any(hp.get("branch_epoch") is not None for hp in ALL_RUNS.values())
    return init_of if branches else rules.init.output.model


@per_job
def run_params(wildcards):
    """A run's hyperparameters without None values: exactly what its id hashes, so that a new optional
    hyperparameter (default None) never re-triggers finished runs through Snakemake's params trigger.
    """
    return {k: v for k, v in ALL_RUNS[wildcards.run_id].items() if v is not None}


def print_summary():
    texts = [Path(RESULTS) / "summary.txt"]
    if REPLICATED:
        texts.append(Path(layout.pooled_files()["text"]))
    for text in texts:
        if text.exists():
            print(f"\n{text.read_text()}", file=sys.stderr)


# The analysis target (workflow/rules/analysis.smk): pairs of runs, dealt to PAIR_JOBS pair_soups jobs.
ANALYSIS = CONFIG["analysis"]
PAIRS = sample_pairs(list(ALL_RUNS), ANALYSIS["pairs"], ANALYSIS["seed"])
PAIR_JOBS = max(1, min(ANALYSIS["jobs"], len(PAIRS)))


def each_analysed_run(name):
    """Input function: a run's file `name` for every run of the analysis (the grid's and its branching runs),
    in the main pipeline. A function, so that a target without the analysis does not expand the list at parse
    time (0.5 s of a 10,000-point parse)."""
    return lambda wildcards: expand(
        getattr(rules.finetune.output, name), pipeline=MAIN, run_id=ALL_RUNS
    )


def pair_chunk(wildcards):
    return PAIRS[int(wildcards.chunk) :: PAIR_JOBS]


def chunk_runs(wildcards):
    return sorted({run for pair in pair_chunk(wildcards) for run in pair})


def init_checkpoints():
    """The checkpoints task vectors are measured from: the final init and every kept pretraining epoch
    (plain paths: params are pickled)."""
    epochs = rules.init.output.epochs if CONFIG["model"]["init"] == "pretrain" else []
    return {
        "final": in_main(rules.init.output.model),
        "epochs": dict(zip(KEPT_EPOCHS, map(in_main, epochs))),
    }


def replicate_files():
    """What the pooled rule reads of each pipeline (plain values, since params are compared and pickled)."""

    def of(pattern, folder, **wildcards):
        return expand(pattern, pipeline=folder, **wildcards)[0]

    return [
        {
            "seed": pipeline["seed"],
            "runs": of(rules.run_table.output[0], folder),
            "splits": of(rules.prepare_data.output.splits, folder),
            "outputs": {
                soup: of(SOUP_FILES["outputs"], folder, soup=soup) for soup in SOUPS
            },
        }
        for folder, pipeline in PIPELINES.items()
    ]
