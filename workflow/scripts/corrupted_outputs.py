import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.corrupted import corrupted_outputs
from soupflow.jobs.script import open_job

config = open_job(snakemake)
corrupted_outputs(config, snakemake.input.data, snakemake.input.model, snakemake.input.corrupted, snakemake.output[0],
                  snakemake.threads)
