# The checkpoints timm's config.json goes beside, in each pipeline: the init, every run's and every soup's.
# Plain paths (str): a rule whose input cites another rule's output object directly makes Snakemake hash this
# whole list once per file in it (measured: 0.84 s of the 2,000-point parse, quadratic).
PIPELINE_CHECKPOINTS = [
    *(
        [str(rules.init.output.model)] if RUNS else []
    ),  # a soup-only workflow has no init
    *expand(rules.finetune.output.model, run_id=RUNS, allow_missing=True),
    *expand(rules.pool_checkpoint.output.model, pool_id=POOL, allow_missing=True),
    *each_soup("model"),
]
TIMM_CHECKPOINTS = {
    folder: expand(PIPELINE_CHECKPOINTS, pipeline=folder) for folder in PIPELINES
}


rule timm_configs:
    """timm's config.json beside every checkpoint: `timm.create_model("local-dir:<folder>", pretrained=True)`
    loads it without soupflow. One job for every folder of every pipeline (it reads only the checkpoints'
    headers), its outputs plain paths: outputs under the {pipeline} wildcard have no constant prefix, and
    Snakemake's output index then tests every file of the DAG against each of them (quadratic: 3.7x the
    engine's own parse at 10,000 points). Targets ask for its index files only: a list of 10,000 outputs in
    another rule's input costs Snakemake quadratic time too.
    """
    input:
        data=in_each(rules.prepare_data.output.data),
        models=[path for paths in TIMM_CHECKPOINTS.values() for path in paths],
    output:
        index=in_each(f"{PIPELINE.metrics}/timm_configs.txt"),
        configs=[
            layout.timm_config(path)
            for paths in TIMM_CHECKPOINTS.values()
            for path in paths
        ],
    log:
        f"{RESULTS}/logs/timm_configs.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        checkpoints=[len(paths) for paths in TIMM_CHECKPOINTS.values()],  # per pipeline, in order
    script:
        "../scripts/timm_configs.py"
