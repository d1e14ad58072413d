import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.snakemake_job import start
from soupflow.soup_job import SoupPaths, make_soup

config = start(snakemake)
paths = SoupPaths(
    data=snakemake.input.data,
    runs=snakemake.input.runs,
    model=snakemake.output.model,
    metrics=snakemake.output.metrics,
    trace=snakemake.output.trace,
    start=snakemake.input.get("start"),
    base=snakemake.input.get("base"),
)
make_soup(config, snakemake.wildcards.soup, snakemake.params.spec, paths, snakemake.threads)
