# soupflow: hyperparameter grid -> fine-tuned checkpoints -> model soups -> Parquet metrics, plots, report.
# Thin on purpose: configuration and validation live in src/soupflow/plan/, rules in workflow/rules/.
from snakemake.utils import min_version

min_version("8.0")


include: "workflow/rules/configfile.smk"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/init.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/soups.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/export.smk"


# Seconds of pandas: on a cluster they run where Snakemake runs instead of waiting in the queue.
localrules:
    all,
    resolved_config,
    run_table,
    soups_table,
    trace_table,
    summary,
    timm_configs,
    learning_curves,


rule all:
    default_target: True
    input:
        rules.summary.output,
        rules.plots.output,
        rules.timm_configs.output.index,
        rules.learning_curves.output,
        rules.resolved_config.output,


onsuccess:
    print_summary()
