import _soupflow_path  # noqa: F401  (puts src/ on sys.path)

from soupflow.jobs.init import InitPaths, make_init
from soupflow.jobs.script import open_job
from soupflow.plan.params import kept_epochs

config = open_job(snakemake, resumable=True)
epochs = dict(zip(kept_epochs(config), snakemake.output.epochs, strict=True))  # the rule lists kept_epochs in order
paths = InitPaths(data=snakemake.input.data, model=snakemake.output.model, epochs=epochs,
                  pretrained=snakemake.input.get("pretrained"))
make_init(config, paths, snakemake.threads)
