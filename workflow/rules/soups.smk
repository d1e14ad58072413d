rule soup:
    """One soup recipe over every fine-tuned run (failed or diverged runs are left out inside)."""
    input:
        data=DATA,
        models=run_file("model.safetensors"),
        outputs=run_file("outputs.safetensors"),
        metrics=run_file("metrics.parquet"),
    output:
        model=f"{RESULTS}/soups/{{soup}}/model.safetensors",
        metrics=f"{RESULTS}/soups/{{soup}}/metrics.parquet",
        trace=f"{RESULTS}/soups/{{soup}}/trace.parquet",
    params:
        spec=lambda wildcards: SOUPS[wildcards.soup],
    wildcard_constraints:
        soup="|".join(SOUPS),
    threads: 1
    log:
        f"{RESULTS}/logs/soups/{{soup}}.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/make_soup.py"
