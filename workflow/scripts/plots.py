import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.plots import plot_all
from soupflow.snakemake_job import log, start

start(snakemake)
plot_all(snakemake.input.runs, snakemake.input.soups, snakemake.input.trace, dict(snakemake.output),
         snakemake.params.heatmap_axes)
log.info("plots: %s", ", ".join(snakemake.output))
