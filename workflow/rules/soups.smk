rule soup:
    """One soup recipe over every fine-tuned run (failed or diverged runs are left out inside). Its input is
    the runs table, which names every run's checkpoint and cached outputs (rule run_table, which depends on
    them): one input per soup, not three per run and soup, keeps the DAG of a 10,000-point grid small.
    model_stock and wise_ft also read the init (start), wise_ft the soup it interpolates toward (base).
    """
    input:
        unpack(soup_inputs),
    output:
        model=f"{RESULTS}/soups/{{soup}}/model.safetensors",
        metrics=f"{RESULTS}/soups/{{soup}}/metrics.parquet",
        trace=f"{RESULTS}/soups/{{soup}}/trace.parquet",
    log:
        f"{RESULTS}/logs/soups/{{soup}}.log",
    wildcard_constraints:
        soup="|".join(SOUPS),
    conda:
        "../../envs/soupflow.yaml"
    threads: 1
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        spec=lambda wildcards: SOUPS[wildcards.soup],
    script:
        "../scripts/make_soup.py"
