rule pretrained_weights:
    """timm's hub weights of model.name (model.init: timm), fetched once for every pipeline on the machine that
    runs Snakemake (a local rule: cluster nodes often have no network): from the Hugging Face cache when they
    are there, else from the hub; without either it fails in seconds, saying what to do.
    """
    output:
        weights=layout.pretrained_file(CONFIG["model"]["name"]),
    log:
        f"{layout.RESULTS}/logs/pretrained_weights.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        name=CONFIG["model"]["name"],  # the rerun trigger (the tag names the weights)
    script:
        "../scripts/pretrained_weights.py"


# the init's input where it reads them (soupflow.plan.params.fetches_weights); none otherwise
HUB_WEIGHTS = (
    {"pretrained": rules.pretrained_weights.output.weights}
    if fetches_weights(CONFIG["model"])
    else {}
)
