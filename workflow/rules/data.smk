rule prepare_data:
    """Decode the data set once into uint8 tensors and write the seeded pretrain/train/val/test split."""
    output:
        tensors=f"{RESULTS}/data/dataset.safetensors",
        splits=f"{RESULTS}/data/splits.json",
    log:
        f"{RESULTS}/logs/prepare_data.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        data=data_params(CONFIG["data"]),
        seed=CONFIG["seed"],
        # normalize: pretrained reads the model's pretrained_cfg; otherwise the model is not the data's business
        model=(
            CONFIG["model"]["name"]
            if CONFIG["data"].get("normalize") == "pretrained"
            else None
        ),
    script:
        "../scripts/prepare_data.py"
