import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.jobs.soup import SoupPaths, make_soups
from soupflow.plan.params import soup_base

config = open_job(snakemake)
names, out = list(snakemake.params.specs), snakemake.output
models = dict(zip(names, out.model))
paths = {name: SoupPaths(data=snakemake.input.data, runs=snakemake.input.runs, init=snakemake.input.get("start"),
                         base=models.get(soup_base(spec)), model=models[name], metrics=metrics, trace=trace,
                         outputs=outputs)
         for (name, spec), metrics, trace, outputs in zip(snakemake.params.specs.items(), out.metrics, out.trace,
                                                          out.outputs)}
make_soups(config, snakemake.params.specs, paths, snakemake.threads, snakemake.params.cache)
