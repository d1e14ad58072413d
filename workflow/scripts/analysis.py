from pathlib import Path

import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.analysis_jobs import analyse
from soupflow.snakemake_job import start

config = start(snakemake)
outputs = dict(snakemake.output.items())
analyse(config, list(snakemake.input.chunks), [str(Path(p).parent) for p in snakemake.input.metrics],
        snakemake.input.sanity,
        {name[len("table_"):]: path for name, path in outputs.items() if name.startswith("table_")},
        {name[len("plot_"):]: path for name, path in outputs.items() if name.startswith("plot_")})
