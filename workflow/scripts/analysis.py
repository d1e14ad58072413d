import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.analysis import AnalysisInputs, analyse
from soupflow.jobs.script import open_job
from soupflow.plan.layout import AnalysisPlots, AnalysisTables, analysis_plots, analysis_tables

open_job(snakemake)
out = snakemake.output
inputs = AnalysisInputs(chunks=list(snakemake.input.chunks), metrics=list(snakemake.input.metrics),
                        sanity=snakemake.input.sanity)
tables = AnalysisTables(**{name: out[name] for name in analysis_tables("")})
plots = AnalysisPlots(**{name.removesuffix("_png"): out[name] for name in analysis_plots("")})
analyse(inputs, tables, plots, snakemake.params.color_by)
