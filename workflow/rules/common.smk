# Validated configuration, the expanded runs and helpers shared by the rules.
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(workflow.basedir) / "src")
)  # works with or without `pip install -e .`

from snakemake.exceptions import WorkflowError

from soupflow.config import (
    RECIPES_FROM_START,
    ConfigError,
    data_params,
    resolve_config,
    soup_specs,
    wise_ft_base,
)
from soupflow.config import kept_epochs as kept_epochs_of
from soupflow.grid import (
    expand_analysis_runs,
    expand_runs,
    sample_pairs,
)  # torch-free: parses fast
from soupflow.gpus import visible_gpus
from soupflow.versions import TRAINING as TRAINING_VERSION

try:  # model name and data paths are checked once, by the main process, not again inside every job
    CONFIG = resolve_config(
        config,
        check_model=workflow.is_main_process,
        check_paths=workflow.is_main_process,
    )
except ConfigError as error:
    raise WorkflowError(f"invalid soupflow config: {error}") from None

RUNS = expand_runs(
    CONFIG
)  # {run_id: hyperparameters}: the experiment's fine-tunes, the soups' ingredients
ALL_RUNS = {
    **expand_analysis_runs(CONFIG),
    **RUNS,
}  # plus the analysis' branching runs (only `analysis` asks for them)
SOUPS = soup_specs(CONFIG)  # {soup name: recipe entry}
KEEP_EPOCHS = any(spec.get("ingredients") == "epochs" for spec in SOUPS.values())

# GPUs: each model job asks for one when the machine has any, and a plain `snakemake --cores N` (no
# --resources gpu=…, no profile that sets it) may run as many such jobs at once as there are visible GPUs.
GPUS = visible_gpus()
GPU_JOB = 1 if GPUS else 0
if GPUS and "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", GPUS)
RESULTS = "results"
RUNS_FOLDER = (
    f"{RESULTS}/runs"  # one folder per run: model, outputs, metrics, config, train.log
)


def soup_inputs(wildcards):
    """A soup's inputs: the data, the runs table, and for some recipes the init and a base soup."""
    spec = SOUPS[wildcards.soup]
    inputs = {
        "data": rules.prepare_data.output.tensors,
        "runs": rules.run_table.output[0],
    }
    if spec["recipe"] in RECIPES_FROM_START:
        inputs["start"] = rules.init.output.model
    if wise_ft_base(spec) is not None:
        inputs["base"] = expand(rules.soup.output.model, soup=wise_ft_base(spec))[0]
    return inputs


def kept_epochs():
    """Epochs of the pretraining trajectory that are kept as branch points (0 = before pretraining)."""
    return kept_epochs_of(CONFIG)


def epoch_checkpoint(epoch):
    return f"{RESULTS}/init/epoch_{int(epoch):03d}.safetensors"


def init_of(wildcards):
    """The checkpoint a run starts from: the shared init, or a branch point of the pretraining."""
    branch = ALL_RUNS[wildcards.run_id].get("branch_epoch")
    return rules.init.output.model if branch is None else epoch_checkpoint(branch)


def run_params(wildcards):
    """A run's hyperparameters without None values: exactly what its id hashes, so that a new optional
    hyperparameter (default None) never re-triggers finished runs through Snakemake's params trigger.
    """
    return {k: v for k, v in ALL_RUNS[wildcards.run_id].items() if v is not None}


def run_file(name, runs=None):
    return [
        f"{RUNS_FOLDER}/{run_id}/{name}" for run_id in (RUNS if runs is None else runs)
    ]


def print_summary():
    summary = Path(RESULTS) / "summary.txt"
    if summary.exists():
        print(f"\n{summary.read_text()}", file=sys.stderr)


# The analysis target (workflow/rules/analysis.smk): pairs of runs, dealt to PAIR_JOBS pair_soups jobs.
ANALYSIS = CONFIG["analysis"]
PAIRS = sample_pairs(list(ALL_RUNS), ANALYSIS["pairs"], ANALYSIS["seed"])
PAIR_JOBS = max(1, min(ANALYSIS["jobs"], len(PAIRS)))


def pair_chunk(wildcards):
    return PAIRS[int(wildcards.chunk) :: PAIR_JOBS]


def chunk_runs(wildcards):
    return sorted({run for pair in pair_chunk(wildcards) for run in pair})


def init_checkpoints():
    """'final' and every kept pretraining epoch: the points task vectors are measured from."""
    paths = {"final": str(rules.init.output.model)}  # a plain path: params are pickled
    if CONFIG["model"]["init"] == "pretrain":
        paths.update({f"epoch_{e}": epoch_checkpoint(e) for e in kept_epochs()})
    return paths
