import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.corrupted import make_corrupted
from soupflow.jobs.script import open_job

open_job(snakemake)
make_corrupted(snakemake.params.corruptions, snakemake.input.data, snakemake.output[0])
