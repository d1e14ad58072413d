import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import log, open_job
from soupflow.store.tables import RUN_FILE_COLUMNS, write_runs_table

open_job(snakemake)
files = {kind: list(snakemake.input[kind]) for kind in RUN_FILE_COLUMNS if kind in snakemake.input.keys()}
table = write_runs_table(list(snakemake.input.metrics), files, snakemake.output[0])
log.info("%s: %d runs", snakemake.output[0], len(table))
