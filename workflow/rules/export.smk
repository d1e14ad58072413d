TIMM_FOLDERS = [str(Path(INIT).parent)] + [f"{RUNS_FOLDER}/{run_id}" for run_id in RUNS]
TIMM_FOLDERS += [f"{RESULTS}/soups/{name}" for name in SOUPS]


rule timm_configs:
    """timm's config.json beside every checkpoint: `timm.create_model("local-dir:<folder>", pretrained=True)`
    loads it without soupflow. One job for all folders (it reads only the checkpoints' headers).
    """
    input:
        data=DATA,
        models=[f"{folder}/model.safetensors" for folder in TIMM_FOLDERS],
    output:
        [f"{folder}/config.json" for folder in TIMM_FOLDERS],
    log:
        f"{RESULTS}/logs/timm_configs.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/timm_configs.py"
