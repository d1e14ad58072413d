import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.store.export import write_timm_configs

open_job(snakemake)
write_timm_configs(list(snakemake.input.models), list(snakemake.output.configs), snakemake.input.data,
                   snakemake.output.index)
