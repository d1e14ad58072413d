rule pool_checkpoint:
    """One outside checkpoint (config section pool): loaded into the model and scored on val and test as a
    fine-tune is, its weights rewritten as a .safetensors file plain timm loads: a row of the runs table, an
    ingredient of every soup. Its input is the file itself: adding or replacing one reruns this job and the
    soups, never the grid.
    """
    input:
        data=rules.prepare_data.output.data,
        checkpoint=pool_file,
    output:
        **layout.pool_files(POOL_FOLDER),
    log:
        f"{POOL_FOLDER}/score.log",
    wildcard_constraints:
        pool_id=POOL_ID_PATTERN,
    conda:
        "../../envs/soupflow.yaml"
    threads: 2  # torch's threads (capped by --cores)
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        model=tracked(CONFIG, "model"),
        config=JOB_CONFIG,
    script:
        "../scripts/pool_checkpoint.py"
