import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import log, open_job
from soupflow.store.tables import concat_parquet

open_job(snakemake)
table = concat_parquet(list(snakemake.input.parts), snakemake.output[0])
log.info("%s: %d rows from %d parts", snakemake.output[0], len(table), len(snakemake.input.parts))
