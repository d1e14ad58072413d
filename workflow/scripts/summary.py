import _soupflow_path  # noqa: F401  (puts src/ on sys.path)
from soupflow.summary import write_summary

print(write_summary(snakemake.input.runs, snakemake.input.soups, snakemake.output.text, snakemake.output.table))
