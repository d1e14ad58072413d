TIMM_FOLDERS = [str(Path(rules.init.output.model).parent)] + [
    f"{RUNS_FOLDER}/{run_id}" for run_id in RUNS
]
TIMM_FOLDERS += [f"{RESULTS}/soups/{name}" for name in SOUPS]


rule timm_configs:
    """timm's config.json beside every checkpoint: `timm.create_model("local-dir:<folder>", pretrained=True)`
    loads it without soupflow. One job for all folders (it reads only the checkpoints' headers). Targets ask
    for its index only: a list of 10,000 outputs in another rule's input costs Snakemake quadratic time.
    """
    input:
        data=rules.prepare_data.output.tensors,
        models=[f"{folder}/model.safetensors" for folder in TIMM_FOLDERS],
    output:
        index=f"{RESULTS}/metrics/timm_configs.txt",
        configs=[f"{folder}/config.json" for folder in TIMM_FOLDERS],
    log:
        f"{RESULTS}/logs/timm_configs.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/timm_configs.py"
