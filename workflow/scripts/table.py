import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.snakemake_job import log, start
from soupflow.tables import concat_parquet

start(snakemake)
table = concat_parquet(list(snakemake.input.parts), snakemake.output[0])
log.info("%s: %d rows from %d parts", snakemake.output[0], len(table), len(snakemake.input.parts))
