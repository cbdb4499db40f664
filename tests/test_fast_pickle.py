"""The safe reader's fast lane (``weightinit.checkpoint.fastpickle``): plain checkpoints
read by the C unpickler after a check of the whole opcode stream, everything else by
``torch.load(weights_only=True)``, with the same result or error."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import weightinit as wi
from weightinit.checkpoint import fastpickle
from weightinit.checkpoint.fastpickle import VOCABULARY, fast_load, plain_stream
from weightinit.checkpoint.pickles import safe_load

ALLOWED = {"PROTO", "STOP", "MARK", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE",
           "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1",
           "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINGET",
           "LONG_BINGET", "BINPUT", "LONG_BINPUT", "GLOBAL", "REDUCE", "BUILD", "SETITEM",
           "SETITEMS", "APPEND", "APPENDS", "BINPERSID"}


def _model_state() -> OrderedDict:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    return net.state_dict()  # an OrderedDict with _metadata (a BUILD in the pickle)


def _rich() -> dict:
    base = torch.arange(24, dtype=torch.float32)
    return {
        "state_dict": _model_state(),
        "meta": {"epoch": 3, "big": 2 ** 70, "lr": 0.5, "name": "run", "flags": [True, None],
                 "pair": (1, -70000), "dtype": torch.bfloat16, "size": torch.Size([2, 3]),
                 "device": torch.device("cpu")},
        "view": base[3:15].view(3, 4).t(),  # offset, non-contiguous, shares base's storage
        "base": base,
        "param": nn.Parameter(torch.ones(2, 2)),
        "frozen": nn.Parameter(torch.zeros(3), requires_grad=False),
        "dtypes": [torch.ones(2, dtype=d) for d in (torch.float16, torch.bfloat16, torch.int8,
                                                    torch.bool, torch.complex64, torch.int64,
                                                    torch.float64)],
        "empty": torch.empty(0, 5),
        "scalar": torch.tensor(7.0),
    }


def _same(a, b) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.stride(), a.storage_offset(), a.requires_grad) == \
            (b.dtype, b.shape, b.stride(), b.storage_offset(), b.requires_grad)
        if a.device.type != "meta":
            assert torch.equal(a.view(torch.uint8) if a.dtype is torch.bool else a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("where", [None, "cpu", torch.device("meta")])
def test_plain_checkpoints_are_read_by_the_fast_lane_as_torch_reads_them(tmp_path, mmap, where):
    path = str(tmp_path / "w.pth")
    torch.save(_rich(), path)
    read, value = fast_load(path, where, mmap)
    assert read
    _same(torch.load(path, map_location=where, weights_only=True, mmap=mmap), value)
    if where is None:  # views keep sharing their storage, as torch.load keeps them
        assert value["view"].untyped_storage().data_ptr() == \
            value["base"].untyped_storage().data_ptr()
        assert isinstance(value["param"], nn.Parameter)


def test_torch_weights_only_allows_every_global_of_the_vocabulary():
    """The fast lane reads no global that torch's own safe loader would refuse."""
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = _get_allowed_globals()
    assert sorted(f"{m}.{n}" for m, n in VOCABULARY if f"{m}.{n}" not in allowed) == []
    assert ("torch._utils", "_rebuild_tensor_v2") in VOCABULARY
    assert not any(m.startswith(("os", "builtins", "numpy", "_codecs")) for m, _ in VOCABULARY)


def _mmengine_meta(path: str) -> None:
    torch.save({"state_dict": _model_state(),
                "meta": {"epoch": np.int64(3), "loss": np.float32(0.25),
                         "hist": np.arange(4, dtype=np.float64)}}, path)


@pytest.mark.parametrize("kind", ["numpy", "legacy", "bytes"])
def test_other_files_are_read_by_the_slow_path_unchanged(tmp_path, kind):
    path = str(tmp_path / "w.pth")
    if kind == "numpy":
        _mmengine_meta(path)
    elif kind == "legacy":
        torch.save(_model_state(), path, _use_new_zipfile_serialization=False)
    else:
        torch.save({"state_dict": _model_state(), "raw": b"\x00\xffab"}, path)
    assert fast_load(path, None, False) == (False, None)
    value = safe_load(path, None, False)
    assert list(value if kind == "legacy" else value["state_dict"]) == \
        list(_model_state())
    if kind == "numpy":
        assert value["meta"]["epoch"] == 3 and type(value["meta"]["hist"]) is np.ndarray
    if kind == "bytes":
        assert value["raw"] == b"\x00\xffab"


def test_protocol_4_is_left_to_torch_which_refuses_its_frames(tmp_path):
    path = str(tmp_path / "w.pth")
    torch.save(_model_state(), path, pickle_protocol=4)
    assert fast_load(path, None, False) == (False, None)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported operand 149"):
        safe_load(path, None, False)


def test_a_torchscript_archive_is_never_run_by_the_fast_lane(tmp_path):
    path = str(tmp_path / "s.pth")
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)
    assert fast_load(path, None, True) == (False, None)
    with pytest.raises(wi.CheckpointError):
        wi.load_checkpoint(nn.Linear(2, 2), path)


def test_a_pickled_module_is_still_called_unsafe(tmp_path):
    path = str(tmp_path / "m.pth")
    torch.save(nn.Linear(2, 2), path)
    assert fast_load(path, None, True) == (False, None)
    with pytest.raises(wi.UnsafeCheckpointError, match="needs arbitrary code"):
        wi.load_checkpoint(nn.Linear(2, 2), path)


# -- crafted streams ------------------------------------------------------------------------

def _with_pickle(path: str, data: bytes) -> str:
    """A copy of the torch.save file ``path`` whose data.pkl is ``data``."""
    out = path + ".crafted.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = data if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, body)
    return out


def _data_pkl(path: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


@pytest.mark.parametrize("data", [
    b"\x80\x02" + _global("os", "system") + _unicode("true") + b"\x85R.",  # imports code
    b"\x80\x02" + _global("numpy", "dtype") + b".",  # outside the vocabulary (slow path's)
    b"\x80\x02(" + _global("collections", "OrderedDict") + b"o.",  # OBJ (INST's cousin)
    b"\x80\x02i" + b"collections\nOrderedDict\n.",  # INST
    b"\x80\x02" + _global("collections", "OrderedDict") + b")\x81.",  # NEWOBJ
    b"\x80\x04" + b"\x8c\x0bcollections\x8c\x0bOrderedDict\x93).",  # STACK_GLOBAL
    b"\x80\x02\x82\x01.",  # an extension code
    b"\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00}.",  # a protocol-4 frame
    b"\x80\x02Pstorage\n.",  # a text persistent id
    b"\x80\x02}r\x05\x00\x00\x00.",  # a memo index past the opcodes before it
    b"\x80\x02}",  # no STOP
    b"\x80\x02}.}",  # bytes after STOP
    b"\x80\x02X\xff\xff\xff\x7fab.",  # a string longer than the stream
    b"\x80\x02" + b"ctorch._utils\n_rebuild_tensor_v2",  # a global without its lines
])
def test_streams_outside_the_rules_are_refused_before_running(data):
    assert not plain_stream(data)


def test_a_global_inside_a_string_is_only_a_string():
    """The check parses strings as the unpickler does: bytes spelling an import inside one
    are data, and the C unpickler returns them as text."""
    data = b"\x80\x02" + _unicode("cos\nsystem\n") + b"."
    assert plain_stream(data)
    assert fastpickle._Reader(io.BytesIO(data)).load() == "cos\nsystem\n"


def test_memo_indices_up_to_the_opcode_count_are_accepted():
    assert plain_stream(b"\x80\x02}r\x01\x00\x00\x00.")  # two opcodes before it
    assert not plain_stream(b"\x80\x02}r\x03\x00\x00\x00.")


def test_a_memo_bomb_never_reaches_the_c_unpickler(tmp_path):
    """One LONG_BINPUT with a huge index makes the C unpickler allocate 16 bytes per index
    (8 GiB here); with 3 GiB of address space left it fails with MemoryError. The safe
    reader refuses the stream before running it and the slow path reads it."""
    path = str(tmp_path / "w.pth")
    torch.save({}, path)
    crafted = _with_pickle(path, b"\x80\x02}r\x00\x00\x00\x20.")
    script = textwrap.dedent(f"""
        import pickle, resource
        from weightinit.checkpoint.pickles import safe_load
        kib = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize")))
        limit = kib * 1024 + (3 << 30)  # what the process maps now, and 3 GiB more
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print("safe", safe_load({crafted!r}, None, False))
        try:
            pickle.loads(b"\\x80\\x02}}r\\x00\\x00\\x00\\x20.")
        except MemoryError:
            print("c unpickler: MemoryError")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["safe {}", "c unpickler: MemoryError"]


def test_build_on_a_vocabulary_function_changes_nothing_shared(tmp_path):
    """BUILD with slot state sets attributes on what the stack holds: a fresh wrapper, never
    torch's own function (whose defaults would change every later load)."""
    target = torch._utils._rebuild_tensor_v2
    before = (target.__defaults__, dict(target.__dict__))
    data = (b"\x80\x02" + _global("torch._utils", "_rebuild_tensor_v2")
            + b"N}" + _unicode("__defaults__") + b"K\x07\x85s\x86b.")
    assert plain_stream(data)
    path = str(tmp_path / "w.pth")
    torch.save({}, path)
    read, value = fast_load(_with_pickle(path, data), None, False)
    assert read and value is not target and value.__defaults__ == (7,)
    assert (target.__defaults__, dict(target.__dict__)) == before
    torch.save(torch.arange(3.0), path)
    assert torch.equal(safe_load(path, None, False), torch.arange(3.0))


def test_a_failure_in_the_fast_lane_gives_the_slow_paths_result(tmp_path, monkeypatch):
    path = str(tmp_path / "w.pth")
    torch.save(_model_state(), path)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(fastpickle, "read_zip_checkpoint", broken)
    assert fast_load(path, None, True) == (False, None)
    _same(safe_load(path, None, True), torch.load(path, weights_only=True))


def test_a_registered_extension_code_sends_files_to_the_slow_path(tmp_path, monkeypatch):
    path = str(tmp_path / "w.pth")
    torch.save(_model_state(), path)
    monkeypatch.setitem(copyreg._inverted_registry, 240, ("collections", "OrderedDict"))
    assert fast_load(path, None, True) == (False, None)


def _stream_facts(data: bytes):
    """What the reference parser sees in ``data``: (opcode names, globals, memo indices put
    with the count of opcodes before each, position after STOP, None if a string is not
    UTF-8: the unpickler decodes strings as the parser does, so it stops there too); None
    where it can not parse it otherwise."""
    names, globals_, puts, end = [], [], [], None
    try:
        for i, (op, arg, pos) in enumerate(pickletools.genops(data)):
            names.append(op.name)
            if op.name == "GLOBAL":
                globals_.append(tuple(arg.split(" ", 1)))
            if op.name == "LONG_BINPUT":
                puts.append((arg, i))
            end = pos + 1
    except UnicodeDecodeError:
        return names, globals_, puts, None
    except Exception:  # noqa: BLE001 (any other parse failure)
        return None
    return names, globals_, puts, end


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_an_accepted_stream_is_what_the_reference_parser_reads(data):
    """Byte-level mutations of a real checkpoint pickle: whenever the check accepts one, the
    reference parser (pickletools) reads the same stream with only allowed opcodes and
    globals, memo indices in bounds, ending at its STOP (no desynchronised parse)."""
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "meta": {"a": [1, 2.5, "x"]}}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        raw = bytearray(z.read(next(n for n in z.namelist() if n.endswith("/data.pkl"))))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            raw[pos] = data.draw(st.integers(0, 255))
        elif action == "insert":
            raw.insert(pos, data.draw(st.integers(0, 255)))
        elif len(raw) > 2:
            del raw[pos]
    stream = bytes(raw)
    if not plain_stream(stream):
        return
    facts = _stream_facts(stream)
    assert facts is not None
    names, globals_, puts, end = facts
    assert set(names) <= ALLOWED
    if end is not None:
        assert names[-1] == "STOP" and end == len(stream)
    else:  # a bad string: the C unpickler stops at it (or at an error before it) as well
        reader = fastpickle._Reader(io.BytesIO(stream))
        reader.persistent_load = lambda pid: torch.storage.TypedStorage(64, dtype=torch.float32)
        with pytest.raises(Exception):  # noqa: B017 (whichever comes first)
            reader.load()
    assert all(g in VOCABULARY for g in globals_)
    assert all(index <= count for index, count in puts)
