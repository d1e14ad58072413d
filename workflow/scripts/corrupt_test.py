import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.corrupted_job import make_corrupted
from soupflow.snakemake_job import start

config = start(snakemake)
make_corrupted(config, snakemake.input.data, snakemake.output[0])
