import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.corrupted_job import corrupted_outputs
from soupflow.snakemake_job import start

config = start(snakemake)
corrupted_outputs(config, snakemake.input.data, snakemake.input.model, snakemake.input.corrupted, snakemake.output[0],
                  snakemake.threads)
