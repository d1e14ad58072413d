rule soup:
    """One soup recipe over every fine-tuned run (failed or diverged runs are left out inside). Its input is
    the runs table, which names every run's checkpoint and cached outputs (rule run_table, which depends on
    them): one input per soup, not three per run and soup, keeps the DAG of a 10,000-point grid small.
    model_stock and wise_ft also read the init (start), wise_ft the soup it interpolates toward (base).
    """
    input:
        unpack(soup_inputs),
    output:
        **layout.soup_files(f"{PIPELINE.soups}/{{soup}}"),
    log:
        f"{PIPELINE.logs}/soups/{{soup}}.log",
    wildcard_constraints:
        soup="|".join(SOUPS),
    conda:
        "../../envs/soupflow.yaml"
    threads: 1
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        spec=lambda wildcards: SOUPS[wildcards.soup],
        config=resolved,
    script:
        "../scripts/make_soup.py"
