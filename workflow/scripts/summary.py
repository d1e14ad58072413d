import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.snakemake_job import log, start
from soupflow.summary import write_summary

start(snakemake)
log.info("%s", write_summary(snakemake.input.runs, snakemake.input.soups, snakemake.output.text,
                             snakemake.output.table))
