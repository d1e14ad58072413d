rule finetune:
    """One grid point: fine-tune from the shared init. Its params are only its own hyperparameters, so
    adding grid points never re-triggers existing runs."""
    input:
        data=rules.prepare_data.output.data,
        init=run_start(),
    output:
        # epochs.parquet only when a soup takes ingredients: epochs (turning that on retrains the runs once),
        # ema.safetensors only when a run has ema_decay (common.smk: KEEP_EMA); tb/ (TensorBoard) is no output
        **layout.run_files(RUN_FOLDER, keep_epochs=KEEP_EPOCHS, ema=KEEP_EMA),
    log:
        layout.run_log(RUN_FOLDER),
    wildcard_constraints:
        run_id=RUN_ID_PATTERN,
    conda:
        "../../envs/soupflow.yaml"
    threads: DEVICES  # one thread per process (profiles give more)
    resources:
        gpu=gpus_per_run,  # one GPU per process; plain --cores N runs at most as many as are visible
    params:
        hp=run_params,
        model=tracked(CONFIG, "model"),
        code=TRAINING_VERSION,  # soupflow.plan.versions: bumped when results change on purpose
        config=JOB_CONFIG,
    script:
        "../scripts/finetune.py"
