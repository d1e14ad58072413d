import _soupflow_path  # noqa: F401  (puts src/ on sys.path)
from pathlib import Path

from soupflow.jobs import make_soup
from soupflow.snakemake_job import start

config = start(snakemake)
make_soup(config, snakemake.wildcards.soup, snakemake.params.spec, snakemake.input.data,
          [str(Path(p).parent) for p in snakemake.input.models], snakemake.output.model,
          snakemake.output.metrics, snakemake.output.trace, snakemake.threads)
