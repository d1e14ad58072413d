# The checkpoints timm's config.json goes beside: the init, every run's and every soup's. Plain paths (str):
# a rule whose input cites another rule's output object directly makes Snakemake hash this whole list once per
# file in it (measured: 0.84 s of the 2,000-point parse, quadratic).
TIMM_CHECKPOINTS = [
    str(rules.init.output.model),
    *expand(rules.finetune.output.model, run_id=RUNS, allow_missing=True),
    *each_soup("model"),
]


rule timm_configs:
    """timm's config.json beside every checkpoint: `timm.create_model("local-dir:<folder>", pretrained=True)`
    loads it without soupflow. One job for all folders (it reads only the checkpoints' headers). Targets ask
    for its index only: a list of 10,000 outputs in another rule's input costs Snakemake quadratic time.
    """
    input:
        data=str(rules.prepare_data.output.data),  # a plain path, as above
        models=TIMM_CHECKPOINTS,
    output:
        index=f"{PIPELINE.metrics}/timm_configs.txt",
        configs=[layout.timm_config(path) for path in TIMM_CHECKPOINTS],
    log:
        f"{PIPELINE.logs}/timm_configs.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/timm_configs.py"
