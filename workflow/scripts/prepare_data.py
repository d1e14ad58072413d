import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.data import prepare
from soupflow.snakemake_job import start

start(snakemake)
prepare(snakemake.params.data, snakemake.params.seed, snakemake.output.tensors, snakemake.output.splits,
        snakemake.params.model)
