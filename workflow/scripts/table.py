import _soupflow_path  # noqa: F401  (puts src/ on sys.path)
from soupflow.jobs import concat_parquet

concat_parquet(list(snakemake.input.parts), snakemake.output[0])
