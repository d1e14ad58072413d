rule prepare_data:
    """Decode the data set once into uint8 tensors (or list its image files: data.format files) and write the
    seeded pretrain/train/val/test split."""
    input:
        # data.format files: the folders whose listing prepare_data writes (a new image changes its folder)
        image_folders(CONFIG["data"]),
    output:
        **layout.data_files(PIPELINE.data, CONFIG["data"]["format"]),
    log:
        f"{PIPELINE.logs}/prepare_data.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        # rerun triggers (the job reads the resolved config)
        data=tracked(CONFIG, "data"),
        seed=replicate_seed,
        # normalize: pretrained reads the model's pretrained_cfg; otherwise the model is not the data's business
        model=(
            CONFIG["model"]["name"]
            if CONFIG["data"]["normalize"] == "pretrained"
            else None
        ),
        config=JOB_CONFIG,
    script:
        "../scripts/prepare_data.py"


rule resolved_config:
    """The config this run resolved, every default filled in: what every job was given."""
    output:
        f"{PIPELINE.pipeline}/config.yaml",
    log:
        f"{PIPELINE.logs}/resolved_config.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        # the rerun trigger: rewritten whenever the config changes (nothing depends on it)
        resolved=lambda wildcards: PIPELINES[pipeline_of(wildcards)],
        config=JOB_CONFIG,  # what it writes: the config every job of this pipeline is handed
    script:
        "../scripts/resolved_config.py"
