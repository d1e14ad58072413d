rule finetune:
    """One grid point: fine-tune from the shared init. Its params are only its own hyperparameters, so
    adding grid points never re-triggers existing runs."""
    input:
        data=rules.prepare_data.output.data,
        init=init_of,
    output:
        # epochs.parquet only when a soup takes ingredients: epochs (turning that on retrains the runs once)
        **layout.run_files(RUN_FOLDER, keep_epochs=KEEP_EPOCHS),
    log:
        layout.run_log(RUN_FOLDER),
    wildcard_constraints:
        run_id=RUN_ID_PATTERN,
    conda:
        "../../envs/soupflow.yaml"
    threads: 1
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        hp=run_params,
        model=tracked(CONFIG, "model"),
        code=TRAINING_VERSION,  # soupflow.plan.versions: bumped when results change on purpose
        config=RESOLVED,
    script:
        "../scripts/finetune.py"
