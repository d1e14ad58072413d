"""soupflow: a hyperparameter grid to fine-tuned checkpoints to model soups, as a Snakemake workflow.

Layers, each importing only those after it: ``jobs`` → ``report`` → ``core`` → ``store`` → ``plan``.
"""
