from pathlib import Path

import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.analysis_jobs import corrupted_outputs
from soupflow.snakemake_job import start

config = start(snakemake)
corrupted_outputs(config, snakemake.input.data, str(Path(snakemake.input.model).parent), snakemake.input.corrupted, snakemake.output[0],
                  snakemake.threads)
