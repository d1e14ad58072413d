import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.jobs.shift import prepare_shift

config = open_job(snakemake)
prepare_shift(config, snakemake.params.source, snakemake.input.data, snakemake.output[0])
