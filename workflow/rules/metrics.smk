rule run_table:
    """Every run's metrics in one table, with the paths of each run's model and cached outputs (and kept
    epochs, moving averages): the soups' list of ingredients, and the only way a soup job finds a run's files.
    """
    input:
        **(
            {
                "epochs": expand(
                    rules.finetune.output.epochs, run_id=RUNS, allow_missing=True
                )
            }
            if KEEP_EPOCHS
            else {}
        ),
        **({"ema": run_table_files("ema")} if KEEP_EMA else {}),
        metrics=run_table_files("metrics"),  # the grid's runs, then the pool's checkpoints
        model=run_table_files("model"),
        outputs=run_table_files("outputs"),
    output:
        layout.runs_table(PIPELINE.metrics),
    log:
        f"{PIPELINE.logs}/run_table.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        layout=2,  # 2: the file columns (metrics_file, model_file, …); a bump rewrites old tables
    script:
        "../scripts/run_table.py"


rule soups_table:
    """Every soup's rows (one per repeat) in one table: the per-soup metrics of rule soup, and each shift set's
    scores of each soup (data.shift_sets; rule shift_table)."""
    input:
        **({"shift": SHIFT["table"]} if SHIFT_SETS else {}),
        parts=rules.soups.output.metrics,
    output:
        f"{PIPELINE.metrics}/soups.parquet",
    log:
        f"{PIPELINE.logs}/tables/soups.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/soups_table.py"


rule trace_table:
    """Every candidate every soup recipe scored, in one table: the per-soup traces of rule soup."""
    input:
        parts=rules.soups.output.trace,
    output:
        f"{PIPELINE.metrics}/soup_trace.parquet",
    log:
        f"{PIPELINE.logs}/tables/soup_trace.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/table.py"


rule summary:
    """The summary table printed at the end of a run (best individual, soups, ensembles)."""
    input:
        **({"shift": SHIFT["table"]} if SHIFT_SETS else {}),
        runs=rules.run_table.output[0],
        soups=rules.soups_table.output[0],
    output:
        text=f"{PIPELINE.pipeline}/summary.txt",
        table=report(
            f"{PIPELINE.pipeline}/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        f"{PIPELINE.logs}/summary.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/summary.py"


rule pooled:
    """Each soup against the best individual pooled over the replicates (`replicates` in the config): the
    table, the summary section printed at the end of a run, and the forest plot. Reads only what the
    pipelines wrote (each soup's saved test logits, the best run's cached ones)."""
    input:
        runs=in_each(rules.run_table.output[0]),
        splits=in_each(rules.prepare_data.output.splits),
        outputs=in_each(SOUP_FILES["outputs"], soup=SOUPS),
        soups=in_main(rules.soups_table.output[0]),
    output:
        table=layout.pooled_files()["table"],
        text=layout.pooled_files()["text"],
        figure=report(
            layout.pooled_files()["figure"],
            caption="../report/replicates.rst",
            category="Plots",
        ),
    log:
        f"{RESULTS}/logs/pooled.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        replicates=replicate_files(),
    script:
        "../scripts/pooled.py"
