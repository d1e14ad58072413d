from pathlib import Path

import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.analysis_jobs import sanity
from soupflow.snakemake_job import start

config = start(snakemake)
sanity(config, snakemake.input.data, [str(Path(p).parent) for p in snakemake.input.metrics], snakemake.output[0],
       snakemake.threads)
