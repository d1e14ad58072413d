rule finetune:
    """One grid point: fine-tune from the shared init. Its params are only its own hyperparameters, so
    adding grid points never re-triggers existing runs."""
    input:
        data=rules.prepare_data.output.tensors,
        init=init_of,
    output:
        # epochs.parquet only when a soup takes ingredients: epochs (turning that on retrains the runs once)
        **(
            {"epochs": f"{RUNS_FOLDER}/{{run_id}}/epochs.parquet"}
            if KEEP_EPOCHS
            else {}
        ),
        model=f"{RUNS_FOLDER}/{{run_id}}/model.safetensors",
        outputs=f"{RUNS_FOLDER}/{{run_id}}/outputs.safetensors",
        history=f"{RUNS_FOLDER}/{{run_id}}/history.parquet",
        metrics=f"{RUNS_FOLDER}/{{run_id}}/metrics.parquet",
        config=f"{RUNS_FOLDER}/{{run_id}}/config.yaml",
    log:
        f"{RUNS_FOLDER}/{{run_id}}/train.log",
    wildcard_constraints:
        run_id="run-[0-9a-f]{10}",
    conda:
        "../../envs/soupflow.yaml"
    threads: 1
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        hp=run_params,
        model=CONFIG["model"],
        code=TRAINING_VERSION,  # soupflow.versions: bumped when results change on purpose
    script:
        "../scripts/finetune.py"
