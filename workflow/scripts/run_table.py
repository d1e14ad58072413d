import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.snakemake_job import log, start
from soupflow.tables import RUN_FILE_COLUMNS, runs_table

start(snakemake)
files = {kind: list(snakemake.input[kind]) for kind in RUN_FILE_COLUMNS if kind in snakemake.input.keys()}
table = runs_table(list(snakemake.input.metrics), files, snakemake.output[0])
log.info("%s: %d runs", snakemake.output[0], len(table))
