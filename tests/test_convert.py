"""Issue 13: real (OpenMMLab) checkpoints load safely, and ``weightinit convert``."""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import weightinit as wi
from weightinit.cli import main


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)


def mm_checkpoint(path: Path, state: dict) -> Path:
    torch.save({"meta": {"epoch": np.int64(3), "hist": np.array([1.0, 2.0]),
                         "mmengine_version": "0.10.7", "dtype": np.dtype("float32"),
                         "lr": np.float64(0.01)},
                "state_dict": OrderedDict(state),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}}, path)
    return path


class Custom:
    def __init__(self) -> None:
        self.x = 1


def run(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_openmmlab_checkpoint_with_numpy_meta_loads_without_allow_pickle(tmp_path):
    torch.manual_seed(0)
    src = Net()
    path = mm_checkpoint(tmp_path / "epoch_3.pth", src.state_dict())
    m = Net()
    report = wi.load_checkpoint(m, str(path))
    assert sorted(report.loaded) == sorted(src.state_dict())
    assert torch.equal(m.head.weight, src.head.weight)
    meta = wi.checkpoint.read_checkpoint(str(path))["meta"]
    assert meta["epoch"] == 3 and meta["hist"].tolist() == [1.0, 2.0]


def test_anything_beyond_the_allow_list_is_still_refused(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"meta": {"epoch": np.int64(1), "obj": Custom()},
                "state_dict": Net().state_dict()}, path)
    with pytest.raises(wi.UnsafeCheckpointError, match="Custom.*allow_pickle=True"):
        wi.load_checkpoint(Net(), str(path))


def test_convert_writes_the_tensors_as_safetensors(tmp_path):
    torch.manual_seed(1)
    src = Net()
    src.head.weight = src.fc.weight  # tied: shared storage, which safetensors refuses as is
    state = src.state_dict()
    state["fc.half"] = src.fc.bias[:2]  # a view of part of a storage
    state["num_batches"] = 5  # not a tensor
    path = mm_checkpoint(tmp_path / "in.pth", state)
    out = tmp_path / "sub" / "out.safetensors"
    rc, stdout, stderr = run("convert", path, out)
    assert rc == 0, stderr
    assert "left out 1 entries that are not tensors: num_batches" in stdout
    written = load_file(str(out))
    assert sorted(written) == sorted(k for k in state if k != "num_batches")
    for k, v in written.items():
        assert torch.equal(v, state[k]), k
    assert f"wrote {out}: 5 tensors, {out.stat().st_size:,} bytes" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.safetensors"]
    m = Net()
    with pytest.warns(wi.CheckpointKeysWarning, match="unexpected in checkpoint: fc.half"):
        wi.load_checkpoint(m, str(out))
    assert torch.equal(m.head.weight, src.fc.weight)


def test_convert_refuses_unsafe_input_unless_allowed(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"meta": Custom(), "model": Net().state_dict()}, path)
    out = tmp_path / "o.safetensors"
    rc, _, stderr = run("convert", path, out)
    assert rc == 2 and stderr.count("\n") == 1
    assert "needs arbitrary code" in stderr and "--allow-pickle" in stderr
    assert "allow_pickle" not in stderr  # the Python argument: not what the command takes
    assert not out.exists()
    rc, stdout, _ = run("convert", path, out, "--allow-pickle")
    assert rc == 0 and "4 tensors" in stdout


def test_convert_checks_sha256_and_arguments(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(Net().state_dict(), path)
    out = tmp_path / "o.safetensors"
    rc, _, stderr = run("convert", path, out, "--sha256", "0" * 64)
    assert rc == 2 and "sha256 is" in stderr and not out.exists()
    rc, _, stderr = run("convert", path, out, "--sha256",
                        hashlib.sha256(path.read_bytes()).hexdigest())
    assert rc == 0
    rc, _, stderr = run("convert", path, tmp_path / "o.pth")
    assert rc == 2 and ".safetensors" in stderr
    rc, _, stderr = run("convert", path, out, "--sha256", "abc")
    assert rc == 2 and "64 hexadecimal" in stderr
    rc, _, stderr = run("convert", tmp_path / "missing.pth", out)
    assert rc == 2 and "can not be found" in stderr


def test_failed_convert_leaves_no_file(tmp_path):
    path = tmp_path / "s.pth"
    torch.save({"w": torch.eye(3).to_sparse()}, path)
    out = tmp_path / "o.safetensors"
    rc, _, stderr = run("convert", path, out)
    assert rc == 2 and "sparse" in stderr and "Fix:" in stderr
    assert sorted(os.listdir(tmp_path)) == ["s.pth"]
