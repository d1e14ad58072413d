import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.jobs.shift import ShiftInputs, score_shift

config = open_job(snakemake)
inputs = ShiftInputs(snakemake.input.shift, snakemake.input.data, snakemake.input.runs,
                     list(snakemake.input.soup_models), list(snakemake.input.soup_outputs))
score_shift(config, snakemake.wildcards.shift, inputs, snakemake.output[0], snakemake.threads)
