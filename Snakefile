# soupflow: hyperparameter grid -> fine-tuned checkpoints -> model soups -> Parquet metrics, plots, report.
# Thin on purpose: configuration and validation live in src/soupflow/plan/, rules in workflow/rules/.
from snakemake.utils import min_version

min_version("8.0")


include: "workflow/rules/configfile.smk"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# {pipeline}: results/, or a replicate's folder (common.PIPELINES)
wildcard_constraints:
    pipeline="|".join(map(re.escape, PIPELINES)),


include: "workflow/rules/data.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/init.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/pool.smk"
include: "workflow/rules/soups.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/shift.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/export.smk"


# Seconds of pandas: on a cluster they run where Snakemake runs instead of waiting in the queue.
localrules:
    all,
    pretrained_weights,  # hub weights: where the network is (compute nodes may lack it)
    resolved_config,
    run_table,
    soups_table,
    trace_table,
    shift_table,
    summary,
    timm_configs,
    learning_curves,
    pooled,


rule all:
    default_target: True
    input:
        # every pipeline's (one, or one per seed of `replicates`), and the pooled table over them
        in_each(rules.summary.output),
        in_each(rules.plots.output),
        in_each(rules.shift_plot.output) if SHIFT_SETS else [],
        rules.timm_configs.output.index,
        in_each(rules.learning_curves.output),
        in_each(rules.resolved_config.output),
        rules.pooled.output if REPLICATED else [],


onsuccess:
    print_summary()
