import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.store.export import write_timm_configs

open_job(snakemake)
models, configs = list(snakemake.input.models), list(snakemake.output.configs)
for data, index, count in zip(snakemake.input.data, snakemake.output.index, snakemake.params.checkpoints,
                              strict=True):  # one pipeline after the other, in the rule's order
    write_timm_configs(models[:count], configs[:count], data, index)
    models, configs = models[count:], configs[count:]
