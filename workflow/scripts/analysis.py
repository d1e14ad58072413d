import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.analysis import AnalysisInputs, AnalysisPlots, AnalysisTables, analyse
from soupflow.jobs.script import open_job

open_job(snakemake)
out = snakemake.output
inputs = AnalysisInputs(chunks=list(snakemake.input.chunks), metrics=list(snakemake.input.metrics),
                        sanity=snakemake.input.sanity)
tables = AnalysisTables(pairs=out.pairs, correlations=out.correlations, triplets=out.triplets,
                        transitivity=out.transitivity, embedding=out.embedding, robustness=out.robustness,
                        shared_training=out.shared_training, headline=out.headline)
plots = AnalysisPlots(similarity=out.similarity_png, similarity_positive=out.similarity_positive_png,
                      transitivity=out.transitivity_png, embedding=out.embedding_png,
                      shared_training=out.shared_training_png, corrupted=out.corrupted_png)
analyse(inputs, tables, plots, snakemake.params.color_by)
