rule plots:
    """The figures of the model-soup papers for this experiment (seaborn PNGs)."""
    input:
        runs=rules.run_table.output[0],
        soups=rules.soups_table.output[0],
        trace=rules.trace_table.output[0],
    output:
        soups=report(
            f"{PIPELINE.plots}/soups_vs_ingredients.png",
            caption="../report/soups_vs_ingredients.rst",
            category="Plots",
        ),
        heatmap=report(
            f"{PIPELINE.plots}/val_heatmap.png",
            caption="../report/val_heatmap.rst",
            category="Plots",
        ),
        greedy=report(
            f"{PIPELINE.plots}/greedy_ingredients.png",
            caption="../report/greedy_ingredients.rst",
            category="Plots",
        ),
        pruned=report(
            f"{PIPELINE.plots}/pruned_passes.png",
            caption="../report/pruned_passes.rst",
            category="Plots",
        ),
        wise_ft=report(
            f"{PIPELINE.plots}/wise_ft.png",
            caption="../report/wise_ft.rst",
            category="Plots",
        ),
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
        runs=rules.run_table.output[0],
    output:
        report(
            f"{PIPELINE.plots}/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Plots",
        ),
    log:
        f"{PIPELINE.logs}/learning_curves.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/learning_curves.py"
