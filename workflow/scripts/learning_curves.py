import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.script import open_job
from soupflow.report.figures import plot_learning_curves

open_job(snakemake)
plot_learning_curves(list(snakemake.input.histories), snakemake.output[0], snakemake.input.runs)
