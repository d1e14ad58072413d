import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.pooled import PooledPaths, Replicate, pool_replicates
from soupflow.jobs.script import open_job

open_job(snakemake)
pool_replicates([Replicate(**replicate) for replicate in snakemake.params.replicates], snakemake.input.soups,
                PooledPaths(**dict(snakemake.output.items())))
