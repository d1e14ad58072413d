import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.jobs.soup import SoupPaths, make_soup

config = open_job(snakemake)
paths = SoupPaths(data=snakemake.input.data, runs=snakemake.input.runs, init=snakemake.input.get("start"),
                  base=snakemake.input.get("base"), **dict(snakemake.output.items()))
make_soup(config, snakemake.wildcards.soup, snakemake.params.spec, paths, snakemake.threads)
