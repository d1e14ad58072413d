import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.pairs import RunFiles
from soupflow.jobs.sanity import sanity
from soupflow.jobs.script import open_job

config = open_job(snakemake)
runs = [RunFiles(model, metrics) for model, metrics in zip(snakemake.input.models, snakemake.input.metrics, strict=True)]
sanity(config, snakemake.input.data, runs, snakemake.output[0], snakemake.threads)
