import pytest
import torch
from safetensors.torch import load_file

from soupflow.io import atomic_path, atomic_save_safetensors


def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "model.safetensors"
    atomic_save_safetensors({"w": torch.ones(3)}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "wb").write(b"half a checkpoint")
            raise RuntimeError("killed mid-write")
    assert torch.equal(load_file(str(target))["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_tied_weights_are_saved(tmp_path):
    shared = torch.randn(4, 4)
    atomic_save_safetensors({"a": shared, "b": shared}, tmp_path / "t.safetensors")
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert torch.equal(loaded["a"], loaded["b"])
