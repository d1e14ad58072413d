rule run_table:
    """Every run's metrics in one table, with the paths of each run's model and cached outputs (and kept
    epochs): the soups' list of ingredients, and the only way a soup job finds a run's files.
    """
    input:
        **(
            {"epochs": expand(rules.finetune.output.epochs, run_id=RUNS)}
            if KEEP_EPOCHS
            else {}
        ),
        metrics=expand(rules.finetune.output.metrics, run_id=RUNS),
        model=expand(rules.finetune.output.model, run_id=RUNS),
        outputs=expand(rules.finetune.output.outputs, run_id=RUNS),
    output:
        layout.runs_table(),
    log:
        f"{RESULTS}/logs/run_table.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        layout=2,  # 2: the file columns (metrics_file, model_file, …); a bump rewrites old tables
    script:
        "../scripts/run_table.py"


rule soups_table:
    """Every soup's rows (one per repeat) in one table: the per-soup metrics of rule soup."""
    input:
        parts=expand(rules.soup.output.metrics, soup=SOUPS),
    output:
        f"{RESULTS}/metrics/soups.parquet",
    log:
        f"{RESULTS}/logs/tables/soups.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/table.py"


rule trace_table:
    """Every candidate every soup recipe scored, in one table: the per-soup traces of rule soup."""
    input:
        parts=expand(rules.soup.output.trace, soup=SOUPS),
    output:
        f"{RESULTS}/metrics/soup_trace.parquet",
    log:
        f"{RESULTS}/logs/tables/soup_trace.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/table.py"


rule summary:
    """The summary table printed at the end of a run (best individual, soups, ensembles)."""
    input:
        runs=rules.run_table.output[0],
        soups=rules.soups_table.output[0],
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
    script:
        "../scripts/summary.py"
