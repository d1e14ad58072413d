rule plots:
    """The figures of the model-soup papers for this experiment (seaborn PNGs)."""
    input:
        runs=rules.run_table.output[0],
        soups=rules.soups_table.output[0],
        trace=rules.trace_table.output[0],
    output:
        **{
            name: report(
                path, caption=f"../report/{layout.PLOTS[name]}.rst", category="Plots"
            )
            for name, path in layout.plot_files(PIPELINE.plots).items()
        },
    log:
        f"{PIPELINE.logs}/plots.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        heatmap_axes=CONFIG["plots"]["heatmap_axes"],
    script:
        "../scripts/plots.py"


rule learning_curves:
    """Train loss, val accuracy and learning rate per epoch of every fine-tune, from the runs' history tables;
    each run named by its hyperparameters from the runs table."""
    input:
        histories=expand(rules.finetune.output.history, run_id=RUNS, allow_missing=True),
        # a path, not rules.run_table.output: an input that cites a rule's output makes Snakemake hash the
        # whole histories list once per history (quadratic: 27 s of a 10,000-point parse)
        runs=layout.runs_table(PIPELINE.metrics),
    output:
        report(
            layout.learning_curves_file(PIPELINE.plots),
            caption="../report/learning_curves.rst",
            category="Plots",
        ),
    log:
        f"{PIPELINE.logs}/learning_curves.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/learning_curves.py"
