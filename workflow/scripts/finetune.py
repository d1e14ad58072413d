from pathlib import Path

import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs import finetune
from soupflow.snakemake_job import start

config = start(snakemake, resumable=True)
finetune({**config, "model": snakemake.params.model}, snakemake.wildcards.run_id, snakemake.params.hp,
         snakemake.input.data, snakemake.input.init, str(Path(snakemake.output.model).parent), snakemake.threads,
         epochs_table=snakemake.output.get("epochs"))
