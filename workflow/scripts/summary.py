import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import log, open_job
from soupflow.report.summary import write_summary

open_job(snakemake)
log.info("%s", write_summary(snakemake.input.runs, snakemake.input.soups, snakemake.output.text,
                             snakemake.output.table, snakemake.input.get("shift")))
