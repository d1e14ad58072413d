INITS = (
    init_checkpoints()
)  # {"final": path, "epochs": {epoch: path}}: where task vectors are measured from


# When do soups work? ("Too Salty"): `snakemake analysis`. Pairwise midpoint soups of the runs (the grid's and
# the analysis' branching runs), their gains, similarity measures, transitivity, shared training, corruptions.
rule corrupt_test:
    """A seeded corrupted copy of the test split (noise, blur, contrast, brightness, pixelation, JPEG)."""
    input:
        data=in_main(rules.prepare_data.output.data),
    output:
        f"{RESULTS}/analysis/corrupted.safetensors",
    log:
        f"{RESULTS}/logs/analysis/corrupt_test.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        corruptions=ANALYSIS["corruptions"],
    script:
        "../scripts/corrupt_test.py"


rule corrupted_outputs:
    """One run's logits on the corrupted test copy, computed once for all of its pairs."""
    input:
        data=in_main(rules.prepare_data.output.data),
        corrupted=rules.corrupt_test.output[0],
        model=in_main(rules.finetune.output.model),
    output:
        f"{RESULTS}/analysis/corrupted/{{run_id}}.safetensors",
    log:
        f"{RESULTS}/logs/analysis/corrupted_{{run_id}}.log",
    wildcard_constraints:
        run_id=RUN_ID_PATTERN,
    conda:
        "../../envs/soupflow.yaml"
    threads: 1
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        config=RESOLVED[MAIN],
    script:
        "../scripts/corrupted_outputs.py"


rule pair_soups:
    """Midpoint soups of one share of the pairs, with gains and similarity measures: one row per pair and
    BatchNorm option of analysis.bn (averaged statistics; re-estimated on train images).
    """
    input:
        data=in_main(rules.prepare_data.output.data),
        corrupted=rules.corrupt_test.output[0],
        inits=[INITS["final"], *INITS["epochs"].values()],
        models=lambda wildcards: expand(
            rules.finetune.output.model, pipeline=MAIN, run_id=chunk_runs(wildcards)
        ),
        outputs=lambda wildcards: expand(
            rules.finetune.output.outputs, pipeline=MAIN, run_id=chunk_runs(wildcards)
        ),
        metrics=lambda wildcards: expand(
            rules.finetune.output.metrics, pipeline=MAIN, run_id=chunk_runs(wildcards)
        ),
        corrupted_logits=lambda wildcards: expand(
            rules.corrupted_outputs.output[0], run_id=chunk_runs(wildcards)
        ),
    output:
        f"{RESULTS}/analysis/pairs/chunk{{chunk}}.parquet",
    log:
        f"{RESULTS}/logs/analysis/pairs_{{chunk}}.log",
    wildcard_constraints:
        chunk=r"\d+",
    conda:
        "../../envs/soupflow.yaml"
    threads: 1
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        config=RESOLVED[MAIN],
        pairs=pair_chunk,
        runs=chunk_runs,  # the run ids of models, outputs, metrics and corrupted_logits, in their order
        inits=INITS,
        bn=ANALYSIS["bn"],  # BatchNorm statistics each midpoint is scored with: editing them reruns the pair jobs
        bn_images=ANALYSIS["bn_images"],
        cache=f"{RESULTS}/analysis/pair_cache",  # one row per pair and BatchNorm option, keyed by content: reused across reruns
    script:
        "../scripts/pair_soups.py"


rule soup_sanity:
    """A model souped with itself (gain exactly 0) and two untrained models (no accuracy gain)."""
    input:
        data=in_main(rules.prepare_data.output.data),
        metrics=each_analysed_run("metrics"),
        models=each_analysed_run("model"),  # in the order of metrics
    output:
        f"{RESULTS}/analysis/sanity.parquet",
    log:
        f"{RESULTS}/logs/analysis/sanity.log",
    conda:
        "../../envs/soupflow.yaml"
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        config=RESOLVED[MAIN],
    script:
        "../scripts/soup_sanity.py"


rule analysis:
    """Every table and figure of the soup analysis (target: `snakemake analysis`)."""
    input:
        chunks=expand(
            f"{RESULTS}/analysis/pairs/chunk{{chunk}}.parquet", chunk=range(PAIR_JOBS)
        ),
        metrics=each_analysed_run("metrics"),
        sanity=rules.soup_sanity.output[0],
    output:
        **layout.analysis_tables(f"{RESULTS}/analysis"),
        **{
            name: report(
                path,
                caption=f"../report/analysis/{name.removesuffix('_png')}.rst",
                category="Analysis",
            )
            for name, path in layout.analysis_plots(f"{RESULTS}/analysis").items()
        },
    log:
        f"{RESULTS}/logs/analysis/analysis.log",
    conda:
        "../../envs/soupflow.yaml"
    params:
        color_by=ANALYSIS["color_by"],
    script:
        "../scripts/analysis.py"
