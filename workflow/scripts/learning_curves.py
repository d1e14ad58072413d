import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.plots import plot_learning_curves
from soupflow.snakemake_job import start

start(snakemake)
plot_learning_curves(list(snakemake.input.histories), snakemake.output[0])
