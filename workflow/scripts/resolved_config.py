import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.store.io import atomic_write_yaml

atomic_write_yaml(open_job(snakemake), snakemake.output[0])
