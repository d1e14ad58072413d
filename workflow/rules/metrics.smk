TABLE_PARTS = {
    "runs": lambda: run_file("metrics.parquet"),
    "soups": lambda: [f"{RESULTS}/soups/{name}/metrics.parquet" for name in SOUPS],
    "soup_trace": lambda: [f"{RESULTS}/soups/{name}/trace.parquet" for name in SOUPS],
}


rule table:
    """One Parquet table from the per-job tables: runs, soups or soup_trace."""
    input:
        lambda wildcards: TABLE_PARTS[wildcards.table](),
    output:
        f"{RESULTS}/metrics/{{table}}.parquet",
    wildcard_constraints:
        table="|".join(TABLE_PARTS),
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/table.py"


rule summary:
    """The summary table printed at the end of a run (best individual, soups, ensembles)."""
    input:
        runs=f"{RESULTS}/metrics/runs.parquet",
        soups=f"{RESULTS}/metrics/soups.parquet",
    output:
        text=f"{RESULTS}/summary.txt",
        table=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Tables"),
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/summary.py"
