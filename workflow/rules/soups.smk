rule soups:
    """Every soup recipe of the config over every fine-tuned run (failed or diverged runs are left out inside),
    in one job per pipeline: it loads the data, the runs' cached logits and the evaluators once, and scores an
    ingredient set two recipes try once. Its input is the runs table, which names every run's checkpoint and
    cached outputs (rule run_table, which depends on them): one input, not three per run, keeps the DAG of a
    10,000-point grid small. model_stock and wise_ft also read the init; wise_ft the soup it interpolates
    toward, cooked first in the same job. Editing one soup entry reruns the job, which restores every other
    soup from its cache (soupflow.jobs.soup_cache) and cooks only what changed.
    """
    input:
        unpack(soups_inputs),
    output:
        **{kind: each_soup(kind) for kind in SOUP_FILES},  # layout.soup_files: model, metrics, trace, outputs
    log:
        f"{PIPELINE.logs}/soups.log",
    conda:
        "../../envs/soupflow.yaml"
    threads: 2  # one process: torch's threads (capped by --cores)
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        specs=SOUPS,  # the entries as written: editing one reruns the job, which cooks only that soup
        options={name: soup_options(spec) for name, spec in SOUPS.items()},  # and a changed default too
        cache=f"{PIPELINE.soups}/.cache",  # each soup's files under the hash of what they depend on
        config=JOB_CONFIG,
    script:
        "../scripts/make_soups.py"
