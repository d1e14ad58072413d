import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.export import write_timm_configs
from soupflow.snakemake_job import start

start(snakemake)
write_timm_configs(list(snakemake.input.models), list(snakemake.output.configs), snakemake.input.data,
                   snakemake.output.index)
