"""No parameter shares memory with anything outside torch after a run: not a numpy array, a
memory-mapped checkpoint file, a DLPack producer, another model.

A whole ``copy_`` in user code may hand the source's storage to the parameter instead of
copying (nothing else can see it) — only when torch allocated that memory. A deferred model
loading a checkpoint takes the loaded tensors as its storage only under the same rule: the
pages of a mapped file are copied, so a file changed or truncated later changes nothing.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from torch.utils.dlpack import from_dlpack

import weightinit as wi


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)


class UserInit(wi.BaseModule):
    """A rule over the Linear, then the user's own init_weights over it (a weightinit run)."""

    def __init__(self, fn) -> None:
        super().__init__(dict(type="Constant", val=3.0, layer="Linear"))
        self.fc = nn.Linear(8, 8)
        self.fn = fn

    def init_weights(self) -> None:
        super().init_weights()
        self.fn(self)


def _run_user_init(fn) -> nn.Module:
    model = UserInit(fn)
    model.init_weights()
    return model


def _shares(param: torch.Tensor, other: torch.Tensor) -> bool:
    a, b = param.untyped_storage(), other.untyped_storage()
    lo, hi = a.data_ptr(), a.data_ptr() + a.nbytes()
    return lo < b.data_ptr() + b.nbytes() and b.data_ptr() < hi


@pytest.mark.parametrize("how", ["param.copy_", "data.copy_", "nn.init-free copy"])
def test_copy_from_a_numpy_array_is_a_copy(how):
    a = np.full((8, 8), 2.0, dtype=np.float32)
    def init_weights(self):
        with torch.no_grad():
            src = torch.from_numpy(a)
            if how == "param.copy_":
                self.fc.weight.copy_(src)
            elif how == "data.copy_":
                self.fc.weight.data.copy_(src)
            else:
                self.fc.weight[...] = src

    model = _run_user_init(init_weights)
    assert torch.equal(model.fc.weight, torch.full((8, 8), 2.0))
    a[:] = -1.0  # the user reuses the array afterwards
    assert torch.equal(model.fc.weight, torch.full((8, 8), 2.0))
    assert not _shares(model.fc.weight, torch.from_numpy(a))


def test_copy_from_a_dlpack_tensor_is_a_copy():
    a = np.full((8, 8), 5.0, dtype=np.float32)
    def init_weights(self):
        with torch.no_grad():
            self.fc.weight.copy_(from_dlpack(a))

    model = _run_user_init(init_weights)
    a[:] = 0.0
    assert torch.equal(model.fc.weight, torch.full((8, 8), 5.0))


def test_copy_from_an_mmap_checkpoint_survives_the_file_changing(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.full((8, 8), 7.0)}, path)
    def init_weights(self):
        state = torch.load(path, mmap=True, weights_only=True)
        with torch.no_grad():
            self.fc.weight.copy_(state["w"])

    model = _run_user_init(init_weights)
    raw = bytearray(path.read_bytes())
    pattern = np.float32(7.0).tobytes() * 8
    at = raw.find(pattern)
    assert at >= 0
    raw[at:at + len(pattern)] = b"\0" * len(pattern)
    with open(path, "r+b") as fh:  # rewritten in place: a mapping would show it
        fh.write(raw)
    assert torch.equal(model.fc.weight, torch.full((8, 8), 7.0))
    os.truncate(path, 16)  # a mapping would now fault on access
    assert torch.equal(model.fc.weight, torch.full((8, 8), 7.0))


def test_copy_from_another_models_parameter_is_a_copy():
    other = Net()
    with torch.no_grad():
        other.fc.weight.fill_(4.0)
    def init_weights(self):
        with torch.no_grad():
            self.fc.weight.copy_(other.fc.weight.detach())

    model = _run_user_init(init_weights)
    with torch.no_grad():
        other.fc.weight.fill_(-4.0)
    assert torch.equal(model.fc.weight, torch.full((8, 8), 4.0))


def test_a_fresh_torch_tensor_is_still_taken_without_a_copy():
    # what the rule keeps allowed: memory torch allocated and nothing else holds
    seen = {}

    def init_weights(self):
        src = torch.full((8, 8), 9.0)
        seen["ptr"] = src.data_ptr()
        with torch.no_grad():
            self.fc.weight.copy_(src)

    model = _run_user_init(init_weights)
    assert model.fc.weight.data_ptr() == seen["ptr"]
    assert torch.equal(model.fc.weight, torch.full((8, 8), 9.0))


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_deferred_checkpoint_load_never_aliases_the_file(tmp_path, fmt):
    values = {"fc.weight": torch.full((8, 8), 1.5), "fc.bias": torch.full((8,), 2.5)}
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file(values, str(path))
    else:
        torch.save(values, path)
    with wi.deferred():
        model = Net()
    wi.load_checkpoint(model, str(path))
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # every byte of the file changed in place
        fh.write(b"\xff" * size)
    assert torch.equal(model.fc.weight, values["fc.weight"])
    assert torch.equal(model.fc.bias, values["fc.bias"])
    os.truncate(path, 0)
    assert torch.equal(model.fc.weight, values["fc.weight"])
    for p in model.parameters():
        storage = p.untyped_storage()
        assert getattr(storage, "filename", None) is None
