rule init:
    """The weights every fine-tune starts from (classifier head included), plus kept branch points."""
    input:
        **HUB_WEIGHTS,  # model.init: timm: the weights rule pretrained_weights fetched
        data=rules.prepare_data.output.data,
    output:
        model=layout.init_file(PIPELINE.init),
        epochs=[layout.epoch_file(PIPELINE.init, e) for e in KEPT_EPOCHS],
    log:
        f"{PIPELINE.logs}/init.log",
    conda:
        "../../envs/soupflow.yaml"
    threads: max(4, DEVICES)
    resources:
        gpu=gpus_per_run,  # one GPU per process; plain --cores N runs at most as many as are visible
    params:
        # only what changes the init's weights: editing soups or grids never retrains it
        model=tracked(CONFIG, "model"),
        pretrain=(
            tracked(CONFIG, "pretrain")
            if CONFIG["model"]["init"] == "pretrain"
            else None
        ),
        code=TRAINING_VERSION,  # soupflow.plan.versions: bumped when results change on purpose
        config=JOB_CONFIG,
    script:
        "../scripts/make_init.py"
