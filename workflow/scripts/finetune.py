import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.finetune import RunPaths, RunSpec, finetune
from soupflow.jobs.script import open_job

config = open_job(snakemake, resumable=True)
run = RunSpec(data=snakemake.input.data, init=snakemake.input.init, run_id=snakemake.wildcards.run_id,
              hp=snakemake.params.hp)
finetune(config, run, RunPaths(**dict(snakemake.output.items())), snakemake.threads)
