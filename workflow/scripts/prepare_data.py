import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.store.datasets import prepare

config = open_job(snakemake)
prepare(config["data"], config["seed"], snakemake.output.data, snakemake.output.splits, config["model"]["name"])
