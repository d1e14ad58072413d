import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.hub import fetch_pretrained
from soupflow.jobs.script import open_job

open_job(snakemake)
fetch_pretrained(snakemake.params.name, snakemake.output.weights)
