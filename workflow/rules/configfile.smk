# The experiment's config: config.yaml, or the files given with --configfile, which replace it instead of
# being merged into it (merging would leak the default grid axes into a user's experiment).


def check_yaml(path):
    """A config file that is not valid YAML stops with its name, line and column (Snakemake's own message
    names neither; files given with --configfile are read by Snakemake before this file runs).
    """
    import yaml

    from snakemake.exceptions import WorkflowError

    try:
        with open(path) as handle:
            yaml.safe_load(handle)
    except FileNotFoundError:
        raise WorkflowError(
            f"no {path} here: run snakemake in the soupflow folder or pass --configfile"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise WorkflowError(f"{path}{where}: not valid YAML ({problem})") from None


if not workflow.overwrite_configfiles:
    check_yaml("config.yaml")

    configfile: "config.yaml"
