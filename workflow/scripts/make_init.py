import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.config import kept_epochs
from soupflow.init_job import InitPaths, make_init
from soupflow.snakemake_job import start

config = {**start(snakemake, resumable=True), "model": snakemake.params.model}
epochs = dict(zip(kept_epochs(config), snakemake.output.epochs, strict=True))  # the rule lists kept_epochs in order
make_init(config, InitPaths(data=snakemake.input.data, model=snakemake.output.model, epochs=epochs), snakemake.threads)
