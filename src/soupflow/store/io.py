"""Atomic writes: every output is written to a temporary file beside it and renamed into place,
so a killed job never leaves a truncated checkpoint or table at a final path."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

_UMASK = os.umask(0)
os.umask(_UMASK)
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0600, and writers that replace the file (safetensors) keep theirs: results are shared
        # like any other file the user makes, so the user's umask decides
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make ``path`` the same file as ``source`` atomically: a hard link (no copy), or a copy where the file
    system allows no links."""
    with atomic_path(path) as tmp:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_orphan_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed write of ``path`` left beside it (only ``atomic_path``'s own
    naming, ``.NAME.*.tmp``); called when a job that writes ``path`` starts. Returns what was removed."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    orphans = list(target.parent.glob(f".{target.name}.*{TMP_SUFFIX}"))
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)


class DamagedFileError(RuntimeError):
    """A result file that cannot be read back as written; the message names it and says what to do."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in key order: the content a file must hold."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data if tensor.numel() else b"")
    return digest.hexdigest()


def _damaged(path: str | os.PathLike, why: str) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged ({why}); delete it and rerun snakemake to make it again")


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors (contiguous, no shared storage) atomically, with the sha256 of their
    content in the metadata so that ``read_safetensors`` can tell a damaged file."""
    plain, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.data_ptr() in seen:  # safetensors refuses tensors that share memory (tied weights)
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        plain[name] = tensor
    with atomic_path(path) as tmp:
        save_file(plain, tmp, metadata={**(metadata or {}), "sha256": tensor_digest(plain)})


def open_safetensors(path: str | os.PathLike):
    """``safe_open`` (lazy, by tensor) whose failure to read the header names the file."""
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as error:
        raise _damaged(path, str(error)) from None


def read_tensors(path: str | os.PathLike, *names: str) -> list[torch.Tensor]:
    """Only the named tensors of a safetensors file, in that order: the others (a run's cached features beside
    its logits) are never read. Unchecked against the file's sha256, which covers every tensor."""
    with open_safetensors(path) as handle:
        return [handle.get_tensor(name) for name in names]


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, checked against the sha256 recorded when soupflow wrote it."""
    with open_safetensors(path) as handle:
        expected = (handle.metadata() or {}).get("sha256")
        try:
            tensors = {name: handle.get_tensor(name).to(device) for name in handle.keys()}
        except Exception as error:  # a truncated body surfaces here
            raise _damaged(path, f"{type(error).__name__}: {error}") from None
    if expected and tensor_digest(tensors) != expected:
        raise _damaged(path, "its content does not match the sha256 recorded when it was written")
    return tensors


def atomic_write_parquet(table: Any, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame or pyarrow Table as Parquet atomically."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def atomic_write_yaml(data: Any, path: str | os.PathLike) -> None:
    atomic_write_text(yaml.safe_dump(data, sort_keys=False), path)


def recorded_digest(path: str | os.PathLike) -> str:
    """The sha256 soupflow records in a safetensors header (the path and size where there is none): a content
    key read from the header alone."""
    with open_safetensors(path) as handle:
        recorded = (handle.metadata() or {}).get("sha256")
    return recorded or f"{path}:{os.path.getsize(path)}"
