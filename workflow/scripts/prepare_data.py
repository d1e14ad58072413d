import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.store.data import prepare

config = open_job(snakemake)
prepare(config["data"], config["seed"], snakemake.output.tensors, snakemake.output.splits, config["model"]["name"])
