import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.pair_job import RunFiles, sanity
from soupflow.snakemake_job import start

config = start(snakemake)
runs = [RunFiles(model, metrics) for model, metrics in zip(snakemake.input.models, snakemake.input.metrics, strict=True)]
sanity(config, snakemake.input.data, runs, snakemake.output[0], snakemake.threads)
