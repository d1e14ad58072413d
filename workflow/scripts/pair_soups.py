import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.pairs import PairPaths, RunFiles, pair_soups
from soupflow.jobs.script import open_job

config = open_job(snakemake)
inputs = snakemake.input
files = zip(inputs.models, inputs.metrics, inputs.outputs, inputs.corrupted_logits, strict=True)
runs = {run_id: RunFiles(*paths) for run_id, paths in zip(snakemake.params.runs, files, strict=True)}
paths = PairPaths(data=inputs.data, corrupted=inputs.corrupted, out=snakemake.output[0], inits=snakemake.params.inits,
                  cache=snakemake.params.cache)
pair_soups(config, snakemake.params.pairs, runs, paths, snakemake.threads)
