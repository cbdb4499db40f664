"""Each private or version-dependent API in ``weightinit.compat``, checked on the installed
torch and numpy: a release that moves or changes one fails here, by name.

These run in every environment of the support matrix (``make test``: numpy 2, numpy 1.x).
"""

from __future__ import annotations

import codecs
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from weightinit import compat


def test_numpy_multiarray_has_the_rebuild_functions_pickles_name():
    mod = compat.numpy_multiarray()
    # what np.ndarray.__reduce__ and numpy scalars' __reduce__ point at, on this numpy
    assert np.array([1.0]).__reduce__()[0] is mod._reconstruct
    assert np.float64(1.5).__reduce__()[0] is mod.scalar


def test_numpy_multiarray_is_found_when_torch_left_a_partial_numpy_core():
    # torch imports numpy._core._multiarray_umath under numpy 1.x, which leaves a
    # numpy._core package without `multiarray`; importing weightinit must not care.
    code = ("import torch, numpy, weightinit, weightinit.compat as c; "
            "m = c.numpy_multiarray(); "
            "print(m._reconstruct is numpy.array([1]).__reduce__()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_norm_and_conv_base_classes():
    assert isinstance(nn.BatchNorm2d(3), compat.NORM_BASE)
    assert isinstance(nn.InstanceNorm1d(3, affine=True), compat.NORM_BASE)
    assert not isinstance(nn.LayerNorm(3), compat.NORM_BASE)
    conv = nn.Conv2d(4, 8, 3, groups=2)
    assert isinstance(conv, compat.CONV_ND) and conv.groups == 2
    assert isinstance(nn.ConvTranspose1d(2, 2, 1), compat.CONV_ND)


def test_trunc_normal_helper_is_what_nn_init_trunc_normal_calls():
    helper = getattr(nn.init, compat.TRUNC_NORMAL_HELPER)
    assert helper.__name__ == compat.TRUNC_NORMAL_HELPER
    seen = []

    def spy(*args, **kwargs):
        seen.append(args)
        return args[0]

    nn.init.__dict__[compat.TRUNC_NORMAL_HELPER] = spy
    try:
        t = torch.empty(3)
        nn.init.trunc_normal_(t, std=0.5)
    finally:
        nn.init.__dict__[compat.TRUNC_NORMAL_HELPER] = helper
    assert len(seen) == 1 and seen[0][0] is t


def test_default_device_follows_set_default_device():
    assert compat.default_device() == torch.device("cpu")
    # in a subprocess: on some torch releases set_default_device(None) does not undo it
    code = ("import torch; from weightinit import compat; torch.set_default_device('meta'); "
            "print(compat.default_device())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "meta"


def test_op_written_args_reads_the_schema():
    assert compat.op_written_args(torch.ops.aten.normal_.default) == ((0,), ())
    assert compat.op_written_args(torch.ops.aten.copy_.default) == ((0,), ())
    assert compat.op_written_args(torch.ops.aten.add.out) == ((), ("out",))
    assert compat.op_written_args(torch.ops.aten.add.Tensor) == ((), ())


def test_dispatch_mode_sees_aten_ops_through_data():
    seen = []

    class Spy(compat.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    p = nn.Parameter(torch.zeros(2))
    with Spy():
        p.data.fill_(1.0)
    assert torch.ops.aten.fill_.Scalar in seen


def test_storage_use_count_counts_views():
    t = torch.zeros(4)
    alone = compat.storage_use_count(t)
    assert alone == 1, "torch._C._storage_Use_Count is gone or changed: aliasing checks are off"
    p = nn.Parameter(torch.zeros(2))
    data = p.data
    assert compat.storage_use_count(p) == 2
    del data
    view = t[1:]
    assert compat.storage_use_count(t) == alone + 1
    del view
    assert compat.storage_use_count(t) == alone


def test_bump_version_advances_the_counter():
    t = torch.zeros(2)
    before = t._version
    compat.bump_version(t)
    assert t._version == before + 1


def test_safe_globals_allows_only_inside_the_block():
    class Box:
        pass

    buf = io.BytesIO()
    torch.save({"x": np.dtype("float32")}, buf)
    data = buf.getvalue()
    with pytest.raises(Exception, match="dtype|GLOBAL|Unsupported"):
        torch.load(io.BytesIO(data), weights_only=True)
    globals_ = [np.dtype, type(np.dtype("float32"))]
    with compat.safe_globals(globals_):
        assert torch.load(io.BytesIO(data), weights_only=True)["x"] == np.float32
    with pytest.raises(Exception, match="dtype|GLOBAL|Unsupported"):
        torch.load(io.BytesIO(data), weights_only=True)
    assert Box not in getattr(torch.serialization, "get_safe_globals", list)()


def test_dtensor_types_and_placements():
    try:
        import torch.distributed.tensor as dt
        from torch.distributed.tensor import placement_types
    except ImportError:  # torch < 2.5: DTensor's private module
        import torch.distributed._tensor as dt
        from torch.distributed._tensor import placement_types

    dtensor, replicate, shard = compat.dtensor_types()
    assert (dtensor, replicate, shard) == (dt.DTensor, dt.Replicate, dt.Shard)
    strided = compat.strided_shard_type()
    if not hasattr(placement_types, "_StridedShard"):  # torch < 2.5: FSDP2 x TP not there
        assert strided is None
        return
    assert strided is placement_types._StridedShard
    placement = strided(1, split_factor=2)  # what layout code reads of it
    assert (placement.dim, placement.split_factor) == (1, 2)
    assert shard(1).dim == 1 and replicate().is_replicate()


def test_local_tensor_and_fsdp_groups_on_a_one_rank_mesh(tmp_path):
    # a real one-process gloo group: DTensor's local storage and FSDP2's parameter groups
    code = f"""
import os, torch, torch.nn as nn, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
dist.init_process_group("gloo", rank=0, world_size=1, init_method="file://{tmp_path}/rdv")
from torch.distributed.device_mesh import init_device_mesh
try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch < 2.6: FSDP2 under its composable name
    from torch.distributed._composable.fsdp import fully_shard
from weightinit import compat
mesh = init_device_mesh("cpu", (1,))
m = nn.Linear(4, 2)
fully_shard(m, mesh=mesh)
w = m.weight
assert compat.local_tensor(w) is w._local_tensor
groups = compat.fsdp_param_groups(m)
assert len(groups) == 1 and len(groups[0].fsdp_params) == 2
for p in groups[0].fsdp_params:
    p.reset_sharded_param()
assert compat.fsdp_param_groups(nn.Linear(1, 1)) == []
dist.destroy_process_group()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_safe_globals_takes_a_stand_in_function_under_another_name():
    # a pickle naming numpy's _reconstruct gets the stand-in, on every torch declared
    calls = []

    def stand_in(*args):
        calls.append(args)
        return "rebuilt"

    buf = io.BytesIO()
    torch.save({"a": np.arange(3)}, buf)
    mod = compat.numpy_multiarray()
    name = f"{np.arange(1).__reduce__()[0].__module__}._reconstruct"
    # _codecs.encode: how protocol-2 pickles carry bytes (allowed by default from torch 2.5)
    globals_ = [(stand_in, name), (codecs.encode, "_codecs.encode"), np.ndarray, np.dtype,
                type(np.dtype("int64"))]
    with compat.safe_globals(globals_):
        with pytest.raises(Exception):  # noqa: B017 - BUILD on a str: torch's own error
            torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert calls and calls[0][0] is np.ndarray
    assert mod._reconstruct is not stand_in


def test_top_dispatch_mode_is_the_innermost_mode():
    class Outer(compat.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class Inner(Outer):
        pass

    assert compat.top_dispatch_mode() is None
    outer, inner = Outer(), Inner()
    with outer:
        assert compat.top_dispatch_mode() is outer
        with inner:
            assert compat.top_dispatch_mode() is inner
        assert compat.top_dispatch_mode() is outer
    assert compat.top_dispatch_mode() is None


def test_pickle_storage_names_are_what_torch_save_writes(tmp_path):
    names = compat.pickle_storage_names()
    assert {"FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
            "BoolStorage"} <= names
    assert not any(n.startswith("Q") for n in names)
    import pickletools
    import zipfile
    path = tmp_path / "w.pth"
    torch.save({"a": torch.ones(2, dtype=torch.bfloat16), "b": torch.ones(1)}, path)
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    written = {a.split(" ")[1] for op, a, _ in pickletools.genops(data)
               if op.name == "GLOBAL" and a.endswith("Storage")}
    assert written == {"BFloat16Storage", "FloatStorage"} and written <= names


def test_read_zip_checkpoint_reads_as_torch_load_and_skips_other_files(tmp_path):
    path = str(tmp_path / "w.pth")
    torch.save({"w": torch.arange(6.0).view(2, 3)}, path)
    for mmap in (True, False):
        read, value = compat.read_zip_checkpoint(path, "cpu", mmap, pickle)
        assert read and torch.equal(value["w"], torch.arange(6.0).view(2, 3))
    legacy = str(tmp_path / "old.pth")
    torch.save({"w": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    assert compat.read_zip_checkpoint(legacy, None, False, pickle) == (False, None)
    script = str(tmp_path / "s.pth")
    torch.jit.save(torch.jit.script(nn.Linear(1, 1)), script)
    assert compat.read_zip_checkpoint(script, None, False, pickle) == (False, None)


def test_loads_weights_only_by_default_says_what_torch_load_does(tmp_path, monkeypatch):
    """The compat answer matches torch: a file naming a global outside torch's allowlist
    is refused by a ``torch.load`` without ``weights_only`` exactly when it says True, and
    an environment variable forcing either way makes it say False (torch decides)."""
    path = str(tmp_path / "module.pth")
    torch.save(nn.Linear(2, 2), path)
    try:
        torch.load(path)
        refused = False
    except pickle.UnpicklingError:
        refused = True
    assert compat.loads_weights_only_by_default() is refused
    for var in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        monkeypatch.setenv(var, "1")
        assert compat.loads_weights_only_by_default() is False
        monkeypatch.delenv(var)
