rule plots:
    """The figures of the model-soup papers for this experiment (seaborn PNGs)."""
    input:
        runs=RUN_TABLE,
        soups=f"{RESULTS}/metrics/soups.parquet",
        trace=f"{RESULTS}/metrics/soup_trace.parquet",
    output:
        soups=report(f"{RESULTS}/plots/soups_vs_ingredients.png", caption="../report/soups_vs_ingredients.rst", category="Plots"),
        heatmap=report(f"{RESULTS}/plots/val_heatmap.png", caption="../report/val_heatmap.rst", category="Plots"),
        greedy=report(f"{RESULTS}/plots/greedy_ingredients.png", caption="../report/greedy_ingredients.rst", category="Plots"),
        pruned=report(f"{RESULTS}/plots/pruned_passes.png", caption="../report/pruned_passes.rst", category="Plots"),
    params:
        heatmap_axes=CONFIG["plots"]["heatmap_axes"],
    log:
        f"{RESULTS}/logs/plots.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/plots.py"
