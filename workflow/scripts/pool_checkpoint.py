import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.pool import PoolPaths, PoolSpec, score_pool_checkpoint
from soupflow.jobs.script import open_job

config = open_job(snakemake)
spec = PoolSpec(data=snakemake.input.data, pool_id=snakemake.wildcards.pool_id, source=snakemake.input.checkpoint)
score_pool_checkpoint(config, spec, PoolPaths(**dict(snakemake.output.items())), snakemake.threads)
