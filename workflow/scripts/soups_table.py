import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import log, open_job
from soupflow.store.tables import write_soups_table

open_job(snakemake)
table = write_soups_table(list(snakemake.input.parts), snakemake.output[0], snakemake.input.get("shift"))
log.info("%s: %d rows from %d soups", snakemake.output[0], len(table), len(snakemake.input.parts))
