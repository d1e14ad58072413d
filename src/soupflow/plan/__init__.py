"""Parse time: what Snakemake needs to plan the workflow — the catalog of names, the validated config, the
grid's run ids, the file layout, the rules' params. No numpy, torch or timm: a bare Snakemake imports it
(import-linter holds that, and that this layer imports nothing else of soupflow)."""
