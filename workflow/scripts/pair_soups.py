from pathlib import Path

import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.analysis_jobs import pair_soups
from soupflow.snakemake_job import start

config = start(snakemake)
run_dirs = {Path(p).parent.name: str(Path(p).parent) for p in snakemake.input.models}
corrupted = {Path(p).stem: p for p in snakemake.input.corrupted_logits}
pair_soups(config, snakemake.params.pairs, snakemake.input.data, snakemake.input.corrupted, run_dirs, corrupted,
           snakemake.params.inits, snakemake.output[0], snakemake.threads, cache=snakemake.params.cache)
