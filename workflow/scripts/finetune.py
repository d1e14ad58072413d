import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.finetune_job import RunPaths, Start, finetune
from soupflow.snakemake_job import start

config = start(snakemake, resumable=True)
paths = RunPaths(
    model=snakemake.output.model,
    outputs=snakemake.output.outputs,
    history=snakemake.output.history,
    metrics=snakemake.output.metrics,
    config=snakemake.output.config,
    epochs=snakemake.output.get("epochs"),
)
run = Start(data=snakemake.input.data, init=snakemake.input.init, run_id=snakemake.wildcards.run_id,
            hp=snakemake.params.hp)
finetune({**config, "model": snakemake.params.model}, run, paths, snakemake.threads)
