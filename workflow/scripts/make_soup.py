import _soupflow_path  # noqa: F401  (puts src/ on sys.path)
from soupflow.jobs import make_soup
from soupflow.snakemake_job import start

config = start(snakemake)
make_soup(config, snakemake.wildcards.soup, snakemake.params.spec, snakemake.input.data, snakemake.input.runs,
          snakemake.params.runs_folder, snakemake.output.model, snakemake.output.metrics, snakemake.output.trace,
          snakemake.threads)
