import _soupflow_path  # noqa: F401  (puts src/ on sys.path)
import pandas as pd

from soupflow.jobs.script import open_job
from soupflow.report.figures import plot_shift

open_job(snakemake)
plot_shift(pd.read_parquet(snakemake.input.table), snakemake.output[0])
