import _soupflow_path  # noqa: F401  (puts src/ on sys.path)
from soupflow.plots import plot_all

plot_all(snakemake.input.runs, snakemake.input.soups, snakemake.input.trace, dict(snakemake.output),
         snakemake.params.heatmap_axes)
