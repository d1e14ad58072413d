import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import log, open_job
from soupflow.report.figures import plot_soup_figures

open_job(snakemake)
plot_soup_figures(snakemake.input.runs, snakemake.input.soups, snakemake.input.trace, dict(snakemake.output),
                  snakemake.params.heatmap_axes)
log.info("plots: %s", ", ".join(snakemake.output))
