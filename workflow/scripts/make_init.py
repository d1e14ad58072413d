import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs import make_init
from soupflow.snakemake_job import start

config = start(snakemake, resumable=True)
epochs = {int(path.rsplit("_", 1)[1].split(".")[0]): path for path in snakemake.output.epochs}
make_init({**config, "model": snakemake.params.model}, snakemake.input.data, snakemake.output.model, epochs,
          snakemake.threads)
