# Test sets under distribution shift (data.shift_sets; docs/shift.md): each prepared once, then every usable run,
# every soup and the runs' ensemble scored on it against the best run. Nothing here trains or cooks: adding a
# set prepares and scores that set only.


rule prepare_shift:
    """One shift set decoded into tensors: the test split corrupted as analysis.corruptions says
    (`corruptions`), or an image folder of the training classes at the data's image shape.
    """
    input:
        data=rules.prepare_data.output.data,
        folders=shift_folders,
    output:
        layout.shift_data_file(SHIFT_FOLDER, streamed=False),
    log:
        f"{PIPELINE.logs}/shift/prepare_{{shift}}.log",
    wildcard_constraints:
        shift=SHIFT_NAME_PATTERN,
    conda:
        "../../envs/soupflow.yaml"
    params:
        source=shift_source,  # rerun triggers: where the set comes from, and how it is corrupted
        corruptions=shift_corruptions,
        config=JOB_CONFIG,
    script:
        "../scripts/prepare_shift.py"


# One shift set streamed (an image folder with data.format files): the listing of its images, read through the
# data's eval transform when scored.
use rule prepare_shift as prepare_shift_listing with:
    output:
        layout.shift_data_file(SHIFT_FOLDER, streamed=True),


rule shift_scores:
    """Every usable run, every soup and the runs' logit ensemble on one shift set and on the test split, each
    against the best run by val (paired bootstrap intervals on the same images, McNemar p).
    """
    input:
        shift=shift_data,
        data=rules.prepare_data.output.data,
        runs=rules.run_table.output[0],
        soup_models=each_soup("model"),
        soup_outputs=each_soup("outputs"),
    output:
        layout.shift_files(PIPELINE.metrics, PIPELINE.plots)["scores"],
    log:
        f"{PIPELINE.logs}/shift/scores_{{shift}}.log",
    wildcard_constraints:
        shift=SHIFT_NAME_PATTERN,
    conda:
        "../../envs/soupflow.yaml"
    threads: 2  # torch's threads, and the DataLoader workers of a streamed set (capped by --cores)
    resources:
        gpu=GPU_JOB,  # one GPU per job; plain --cores N runs at most one per visible GPU
    params:
        config=JOB_CONFIG,
    script:
        "../scripts/shift_scores.py"


rule shift_table:
    """Every shift set's scores in one table."""
    input:
        parts=expand(rules.shift_scores.output[0], shift=SHIFT_SETS, allow_missing=True),
    output:
        layout.shift_files(PIPELINE.metrics, PIPELINE.plots)["table"],
    log:
        f"{PIPELINE.logs}/tables/shift.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/table.py"


rule shift_plot:
    """In distribution vs under shift: each model's paired difference to the best run on test and on each set."""
    input:
        table=rules.shift_table.output[0],
    output:
        report(
            layout.shift_files(PIPELINE.metrics, PIPELINE.plots)["figure"],
            caption="../report/shift.rst",
            category="Plots",
        ),
    log:
        f"{PIPELINE.logs}/shift_plot.log",
    conda:
        "../../envs/soupflow.yaml"
    script:
        "../scripts/shift_plot.py"
