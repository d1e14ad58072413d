TABLE_PARTS = {
    "soups": lambda: [f"{RESULTS}/soups/{name}/metrics.parquet" for name in SOUPS],
    "soup_trace": lambda: [f"{RESULTS}/soups/{name}/trace.parquet" for name in SOUPS],
}


rule run_table:
    """Every run's metrics in one table, with the paths of each run's model and cached outputs (and kept
    epochs): the soups' list of ingredients, and the only way a soup job finds a run's files."""
    input:
        metrics=run_file("metrics.parquet"),
        model=run_file("model.safetensors"),
        outputs=run_file("outputs.safetensors"),
        **({"epochs": run_file("epochs.parquet")} if KEEP_EPOCHS else {}),
    output:
        RUN_TABLE,
    log:
        f"{RESULTS}/logs/run_table.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        layout=2,  # 2: the file columns (model_file, outputs_file, epochs_file); a bump rewrites old tables
    script:
        "../scripts/run_table.py"


rule table:
    """One Parquet table from the per-soup tables: soups or soup_trace."""
    input:
        parts=lambda wildcards: TABLE_PARTS[wildcards.table](),
    output:
        f"{RESULTS}/metrics/{{table}}.parquet",
    log:
        f"{RESULTS}/logs/tables/{{table}}.log",
    wildcard_constraints:
        table="|".join(TABLE_PARTS),
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/table.py"


rule summary:
    """The summary table printed at the end of a run (best individual, soups, ensembles)."""
    input:
        runs=RUN_TABLE,
        soups=f"{RESULTS}/metrics/soups.parquet",
    output:
        text=f"{RESULTS}/summary.txt",
        table=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        runs_folder=RUNS_FOLDER,  # named in the retry command for failed runs
    script:
        "../scripts/summary.py"
