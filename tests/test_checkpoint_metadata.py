"""SPEC B4: numpy values in a ``.pth`` checkpoint's metadata, loaded without ``allow_pickle``.

The attacker's files here name only the globals the safe loader allows (numpy's
``_reconstruct``, ``scalar``, ``ndarray``, ``dtype``, ``numpy.dtypes.*DType``, ``bytes``), with
states numpy itself would never write: object dtypes whose state claims "no objects",
structured dtypes whose field offsets point far past their buffer, shapes of 10**9 elements
over 8 bytes. numpy's own constructors would crash the process or read memory it does not
own on such files, so every one is loaded in a subprocess: a crash fails its test instead of
killing pytest, and the subprocess also measures how much memory the load took.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightinit as wi
from weightinit.checkpoint import loader

#: most a refused load may grow the process's peak resident memory
MAX_GROWTH = 200 * 2**20


# ------------------------------------------------------------------ forging pickles


class Global:
    """A pickle ``GLOBAL`` opcode naming exactly ``path``, whatever Python has there."""

    def __init__(self, path: str) -> None:
        self.module, _, self.name = path.rpartition(".")

    def __call__(self, *args: Any) -> Any:  # pickle wants a callable in __reduce__
        raise NotImplementedError


_NO_STATE = object()


class Call:
    """Pickled as ``func(*args)`` (REDUCE), then ``BUILD state`` when a state is given."""

    def __init__(self, func: Any, *args: Any, state: Any = _NO_STATE) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[Any, ...]:
        if self.state is _NO_STATE:
            return (self.func, self.args)
        return (self.func, self.args, self.state)


class NewObj:
    """Pickled as ``cls.__new__(cls, *args)`` (NEWOBJ)."""

    def __init__(self, cls: Global, *args: Any) -> None:
        self.cls, self.args = cls, args


class Build:
    """Pickled as ``target``, then ``BUILD state`` once more."""

    def __init__(self, target: Any, state: Any) -> None:
        self.target, self.state = target, state


class Forge(pickle._Pickler):  # type: ignore[name-defined]
    """The pure-Python pickler, writing :class:`Global`, :class:`NewObj` and :class:`Build`
    as they say."""

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if type(obj) is Global:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        elif type(obj) is NewObj:
            self.save(obj.cls)
            self.save(obj.args)
            self.write(pickle.NEWOBJ)
        elif type(obj) is Build:
            self.save(obj.target)
            self.save(obj.state)
            self.write(pickle.BUILD)
        else:
            super().save(obj, save_persistent_id)


#: a ``pickle_module`` for ``torch.save`` that forges
FORGE = types.SimpleNamespace(Pickler=Forge, dump=pickle.dump, __name__="forge")

ND = Global("numpy.ndarray")
CORE1, CORE2 = "numpy.core.multiarray", "numpy._core.multiarray"


def dtype(spec: Any, order: str = "<", state: Any = None, args: tuple | None = None,
          name: str = "numpy.dtype") -> Call:
    """``numpy.dtype(spec, False, True)`` + BUILD, as numpy pickles a dtype."""
    return Call(Global(name), *(args if args is not None else (spec, False, True)),
                state=state if state is not None else (3, order, None, None, None, -1, -1, 0))


def array(dt: Any, shape: Any, raw: Any, fortran: Any = False, core: str = CORE1,
          version: Any = 1) -> Call:
    """``_reconstruct(ndarray, (0,), b'b')`` + BUILD ``(1, shape, dtype, fortran, raw)``."""
    return Call(Global(f"{core}._reconstruct"), ND, (0,), b"b",
                state=(version, shape, dt, fortran, raw))


def scalar(dt: Any, raw: Any, core: str = CORE1) -> Call:
    return Call(Global(f"{core}.scalar"), dt, raw)


def save_forged(path: Path, meta: Any, legacy: bool = False) -> str:
    """A checkpoint with a small Linear's weights and ``meta``, pickled by :class:`Forge`."""
    torch.manual_seed(0)
    state = nn.Linear(4, 3).state_dict()
    torch.save({"state_dict": state, "meta": meta}, path, pickle_module=FORGE,
               _use_new_zipfile_serialization=not legacy)
    return str(path)


OBJECT_NO_REFS = (3, "|", None, None, None, -1, -1, 0)  # object dtype claiming "no objects"
F8 = dtype("f8")


def _attacks() -> dict[str, tuple[Any, tuple[str, ...], bool]]:
    """name -> (meta, phrases the refusal names, save in the legacy format)."""
    big = b"\0" * 4096
    return {
        "object_dtype_fake_no_objects": (
            array(dtype("O", state=OBJECT_NO_REFS), (8,), b"A" * 64),
            ("numpy array with dtype object", "['meta']"), False),
        "object_dtype_legacy_file": (
            array(dtype("O", state=OBJECT_NO_REFS), (8,), b"A" * 64),
            ("numpy array with dtype object",), True),
        "object_dtype_numpy2_names": (
            array(dtype("O", state=OBJECT_NO_REFS), (8,), b"A" * 64, core=CORE2),
            ("numpy array with dtype object",), False),
        "huge_object_count": (
            array(dtype("O", state=(3, "|", None, None, None, -1, -1, 63)), (300_000_000,),
                  [0]), ("numpy array with dtype object",), False),
        "structured_offset_out_of_range": (
            array(dtype("V8", "|", (3, "|", None, ("a",), {"a": (F8, 1 << 40)}, 8, 1, 16)),
                  (2,), b"\0" * 16), ("dtype void (structured)",), False),
        "fields_smuggled_into_a_float_dtype": (
            array(dtype("f8", state=(3, "<", None, ("a",), {"a": (F8, 1 << 40)}, 8, 1, 0)),
                  (2,), b"\0" * 16), ("dtype float64", "fields"), False),
        "subarray_dtype": (
            array(dtype("V16", "|", (3, "|", (F8, (2,)), None, None, 16, 8, 0)), (1,),
                  b"\0" * 16), ("dtype void",), False),
        "subarray_smuggled_into_a_float_dtype": (
            array(dtype("f8", state=(3, "<", (F8, (1 << 30,)), None, None, -1, -1, 0)), (1,),
                  b"\0" * 8), ("subarray",), False),
        "absurd_itemsize": (
            array(dtype("f8", state=(3, "<", None, None, None, 1 << 30, -1, 0)), (1,),
                  b"\0" * 8), ("itemsize",), False),
        "absurd_void_itemsize": (
            array(dtype("V1000000000", "|"), (1,), b"\0" * 8), ("dtype void",), False),
        "string_dtype": (array(dtype("U4"), (1,), b"\0" * 16), ("dtype str",), False),
        "datetime_dtype": (array(dtype("M8[s]"), (1,), b"\0" * 8), ("dtype datetime64",),
                           False),
        "multi_byte_dtype_with_byte_order_not_applicable": (
            array(dtype("f8", "|"), (1,), b"\0" * 8), ("byte order '|'",), False),
        "shape_far_bigger_than_bytes": (
            array(F8, (10**9,), b"\0" * 8), ("needs 8000000000 bytes", "holds 8"), False),
        "negative_shape": (array(F8, (-1, 2), b"\0" * 8), ("non-negative",), False),
        "non_int_shape": (array(F8, (1.5,), b"\0" * 8), ("non-negative",), False),
        "too_many_dimensions": (array(F8, (1,) * 40, b"\0" * 8), ("at most 32",), False),
        "zero_size_with_huge_dimensions": (
            array(F8, (0, 1 << 62, 1 << 62), b""), ("empty numpy array",
                                                     "larger than the whole file"), False),
        "object_list_as_raw_data": (array(F8, (2,), [1.0, 2.0]), ("list, not bytes",), False),
        "bytearray_raw_data": (
            array(F8, (2,), Call(Global("builtins.bytearray"), b"\0" * 16)),
            ("bytearray, not bytes",), False),
        "odd_memory_order": (array(F8, (1,), b"\0" * 8, fortran="F"), ("memory order",),
                             False),
        "other_state_version": (array(F8, (1,), b"\0" * 8, version=2), ("not numpy's",),
                                False),
        "array_of_another_class": (
            Call(Global(f"{CORE1}._reconstruct"), Global("numpy.dtype"), (0,), b"b",
                 state=(1, (1,), F8, False, b"\0" * 8)), ("of class",), False),
        "reconstruct_with_a_shape": (
            Call(Global(f"{CORE1}._reconstruct"), ND, (10**9,), b"b",
                 state=(1, (1,), F8, False, b"\0" * 8)), ("_reconstruct arguments",), False),
        "array_state_never_set": (Call(Global(f"{CORE1}._reconstruct"), ND, (0,), b"b"),
                                  ("never set",), False),
        "array_state_set_twice": (
            Build(array(F8, (1,), b"\0" * 8), (1, (1,), F8, False, b"\0" * 8)),
            ("set twice",), False),
        "ndarray_called_directly": (Call(ND, (10**9,), F8), ("numpy.ndarray(",), False),
        "dtype_by_newobj": (NewObj(Global("numpy.dtype"), "O", False, True),
                            ("dtype object",), False),
        "dtype_class_given_another_spec": (
            dtype("O", name="numpy.dtypes.Float64DType"), ("dtype object",), False),
        "dtype_class_not_plain": (Call(Global("numpy.dtypes.ObjectDType")),
                                  ("numpy.dtypes.ObjectDType",), False),
        "scalar_with_wrong_byte_count": (scalar(F8, b"\0" * 3),
                                         ("3 bytes of data instead of 8",), False),
        "scalar_of_object_dtype": (scalar(dtype("O", state=OBJECT_NO_REFS), b"\0" * 8),
                                   ("numpy scalar with dtype object",), False),
        "scalar_with_object_value": (scalar(F8, [1]), ("list, not bytes",), False),
        "internal_placeholder_named": (
            Call(Global("weightinit.checkpoint.numpy_values._PendingArray")),
            ("internal",), False),
        "bytes_of_a_billion": (Call(Global("builtins.bytes"), 10**9), ("bytes(1000000000)",),
                               False),
        "same_bytes_reused_by_many_arrays": (
            [array(dtype("u1", "|"), (len(big),), big) for _ in range(5000)],
            ("more than the whole file",), False),
        "refused_value_as_a_dict_key": (
            {Call(Global(f"{CORE1}.scalar"), F8, b"\0"): 1}, ("[<a key>]",), False),
    }


ATTACKS = _attacks()


# ------------------------------------------------------------------ the subprocess


WORKER = r"""
import json, resource, sys
import torch, torch.nn as nn
import weightinit as wi

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

for name, path in json.loads(sys.argv[1]):
    print(json.dumps({"start": name}), flush=True)
    before, results = peak(), []
    for api in ("load_checkpoint", "initialize"):
        model = nn.Linear(4, 3)
        snap = {k: v.clone() for k, v in model.state_dict().items()}
        error = None
        try:
            if api == "load_checkpoint":
                wi.load_checkpoint(model, path)
            else:
                wi.initialize(model, dict(type="Pretrained", checkpoint=path))
        except Exception as err:
            error = [type(err).__name__, str(err), isinstance(err, wi.InitError)]
        unchanged = all(torch.equal(v, model.state_dict()[k]) for k, v in snap.items())
        results.append({"api": api, "error": error, "unchanged": unchanged})
    print(json.dumps({"case": name, "results": results, "growth": peak() - before}),
          flush=True)
"""


def run_worker(cases: list[tuple[str, str]]) -> tuple[dict[str, Any], str]:
    """Load each ``(name, path)`` in one subprocess; its records by name, and what it said."""
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cases)],
                          capture_output=True, text=True, timeout=600)
    records: dict[str, Any] = {}
    last = None
    for line in done.stdout.splitlines():
        if not line.startswith("{"):  # anything else a library printed
            continue
        item = json.loads(line)
        if "start" in item:
            last = item["start"]
        else:
            records[item["case"]] = item
    why = (f"worker exit status {done.returncode} (negative: killed by that signal) while "
           f"loading {last!r}; stderr: {done.stderr[-3000:]}")
    return records, why


@pytest.fixture(scope="module")
def attack_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    root = tmp_path_factory.mktemp("attacks")
    cases = [(name, save_forged(root / f"{name}.pth", meta, legacy))
             for name, (meta, _, legacy) in ATTACKS.items()]
    return run_worker(cases)


#: torch >= 2.5 allows ``bytearray`` in weights_only loads by default; 2.4 refuses it outright
BYTEARRAY_BY_DEFAULT = "builtins.bytearray" in getattr(
    torch._weights_only_unpickler, "_get_allowed_globals", dict)()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_hand_made_numpy_metadata_is_refused_without_crash_or_big_allocation(attack_results,
                                                                              name):
    records, why = attack_results
    assert name in records, why
    record = records[name]
    for result in record["results"]:
        assert result["error"] is not None, (result["api"], "loaded")
        kind, text, _ = result["error"]
        assert kind == "UnsafeCheckpointError", (result["api"], kind, text)
        phrases = ATTACKS[name][1]
        if "builtins.bytearray" in text and not BYTEARRAY_BY_DEFAULT:
            phrases = ("wants to import builtins.bytearray",)  # refused before any numpy rule
        for phrase in phrases + ("allow_pickle=True",):
            assert phrase in text, (result["api"], phrase, text)
        assert result["unchanged"], result["api"]
    assert record["growth"] < MAX_GROWTH, record["growth"]


def test_refusal_names_the_entry_and_the_way_out(attack_results):
    text = attack_results[0]["object_dtype_fake_no_objects"]["results"][0]["error"][1]
    assert "entry checkpoint['meta'] holds a numpy array with dtype object" in text
    assert "if you trust the file, opt in with allow_pickle=True" in text


# ------------------------------------------------------------------ what keeps loading


def mmengine_meta() -> dict[str, Any]:
    """A ``meta`` dict as MMEngine's CheckpointHook and runners save it."""
    return {
        "epoch": 12, "iter": 3000, "mmengine_version": "0.10.4", "seed": 42,
        "hook_msgs": {"best_score": np.float64(0.8125), "last_ckpt": "work/epoch_12.pth",
                      "best_ckpt": "work/best.pth"},
        "message_hub": {"log_scalars": {"train/loss": [np.float32(0.5), np.float64(0.25)]},
                        "runtime_info": {"max_iters": np.int64(3000), "flag": np.bool_(True)}},
        "dataset_meta": {"palette": np.array([[0, 0, 0], [128, 64, 32]], dtype=np.uint8)},
        "scores": np.arange(12, dtype=np.float32).reshape(3, 4),
        "indices": np.array([3, 1, 2], dtype=np.int64),
        "mask": np.array([True, False, True]),
        "zero_d": np.array(2.5),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        "big_endian": np.array([1, 2], dtype=">i4"),
        "half": np.array([0.5, -1.0], dtype=np.float16),
        "complex": np.array([1 + 2j], dtype=np.complex64),
        "empty_boxes": np.zeros((0, 4), dtype=np.float32),
        "dtypes": [np.dtype("float32"), np.dtype(">f8"), np.dtype(bool), np.dtype("u2")],
        "pair": (np.int8(-3), np.uint16(7), np.complex128(1j), np.float16(1.5)),
    }


def assert_same_value(got: Any, want: Any, where: str = "meta") -> None:
    """``got`` is the plain numpy (or Python) value ``want``, of the same type and layout."""
    assert type(got) is type(want), (where, type(got), type(want))
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            assert_same_value(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same_value(a, b, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert got.tobytes() == want.tobytes(), where
        assert got.flags.f_contiguous == want.flags.f_contiguous, where
        assert got.flags.writeable and got.flags.owndata, where
    elif isinstance(want, np.generic):  # by bytes: a NaN is not equal to itself
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), where
    else:
        assert got == want, where


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_mmengine_meta_saved_by_this_numpy_round_trips(tmp_path, legacy):
    torch.manual_seed(0)
    source = nn.Linear(4, 3)
    meta = mmengine_meta()
    path = str(tmp_path / "mm.pth")
    torch.save({"state_dict": source.state_dict(), "meta": meta}, path,
               _use_new_zipfile_serialization=not legacy)
    assert_same_value(loader.read_checkpoint(path)["meta"], meta)
    for load in (lambda m: wi.load_checkpoint(m, path),
                 lambda m: wi.initialize(m, dict(type="Pretrained", checkpoint=path))):
        model = nn.Linear(4, 3)
        load(model)
        assert torch.equal(model.weight, source.weight)


@pytest.mark.parametrize("core", [CORE1, CORE2])
def test_files_of_either_numpy_generation_load_under_this_one(tmp_path, core):
    """numpy 1.x files name ``numpy.core``, numpy 2.x ``numpy._core``: both load."""
    raw = np.arange(6, dtype=">f4").tobytes()
    meta = {"a": array(dtype("f4", ">"), (2, 3), raw, core=core),
            "f": array(dtype("i2"), (2, 2), np.arange(4, dtype="<i2").tobytes(), fortran=True,
                       core=core),
            "s": scalar(dtype("f8"), np.float64(0.25).tobytes(), core=core),
            "cls": Global("numpy.dtypes.Float64DType"),
            "made_by_class": Call(Global("numpy.dtypes.Float32DType")),
            "ndarray": ND, "empty": array(dtype("u1", "|"), (0, 3), b"", core=core)}
    got = loader.read_checkpoint(save_forged(tmp_path / "x.pth", meta))["meta"]
    assert_same_value(got["a"], np.arange(6, dtype=">f4").reshape(2, 3))
    assert_same_value(got["f"], np.asfortranarray(np.arange(4, dtype="<i2").reshape(2, 2,
                                                                                   order="F")))
    assert_same_value(got["s"], np.float64(0.25))
    assert got["cls"] is np.dtypes.Float64DType and got["ndarray"] is np.ndarray
    assert got["made_by_class"] == np.dtype("float32")
    assert_same_value(got["empty"], np.zeros((0, 3), dtype=np.uint8))


def test_shared_and_nested_values_stay_shared(tmp_path):
    shared = array(dtype("i8"), (2,), np.array([5, 6]).tobytes())
    dt = dtype("f2")
    meta = {"x": shared, "y": [shared, (shared, dt)], "z": OrderedDict(k=dt),
            "keyed": {dtype("u1", "|"): "a dtype as a key"}}
    got = loader.read_checkpoint(save_forged(tmp_path / "x.pth", meta))["meta"]
    assert got["x"] is got["y"][0] is got["y"][1][0]
    assert type(got["x"]) is np.ndarray and got["x"].tolist() == [5, 6]
    assert got["y"][1][1] is got["z"]["k"] and got["z"]["k"] == np.dtype("float16")
    assert type(got["z"]) is OrderedDict and list(got["keyed"]) == [np.dtype("u1")]


def test_allow_pickle_still_loads_anything_trusted(tmp_path):
    path = str(tmp_path / "obj.pth")
    torch.save({"state_dict": nn.Linear(4, 3).state_dict(),
                "meta": {"objects": np.array([1, "two", None], dtype=object)}}, path)
    with pytest.raises(wi.UnsafeCheckpointError, match="dtype object"):
        loader.read_checkpoint(path)
    got = loader.read_checkpoint(path, allow_pickle=True)["meta"]["objects"]
    assert got.dtype == object and got.tolist() == [1, "two", None]
    wi.load_checkpoint(nn.Linear(4, 3), path, allow_pickle=True)


def test_refused_numpy_value_is_unsafe_in_process_too(tmp_path):
    """A refusal that never reaches numpy is safe to raise in this process: exact type,
    model untouched, through both APIs."""
    path = save_forged(tmp_path / "x.pth", {"x": array(F8, (10**9,), b"\0" * 8)})
    for load in (lambda m: wi.load_checkpoint(m, path),
                 lambda m: wi.initialize(m, dict(type="Pretrained", checkpoint=path))):
        model = nn.Linear(4, 3)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(wi.UnsafeCheckpointError) as info:
            load(model)
        assert type(info.value) is wi.UnsafeCheckpointError
        assert "entry checkpoint['meta']['x'] holds a numpy array of shape" in str(info.value)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ------------------------------------------------------------------ property-based


def test_random_numpy_metadata_is_data_or_a_library_error():
    """Hypothesis, in a subprocess (a crash fails the test): random numpy globals, states,
    shapes, dtypes and byte lengths load as the value they encode or are refused."""
    done = subprocess.run([sys.executable, __file__, "--fuzz"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.returncode, done.stdout[-3000:], done.stderr[-5000:])
    assert "fuzz: ok" in done.stdout, done.stdout[-3000:]


VALID_SPECS = ["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8",
               "c16"]
INVALID_SPECS = ["O", "V8", "S4", "U2", "M8[s]", "m8", "f16", "c32", "(2,)f8", "f8,i4", "i3",
                 "", "<f8", "float64"]
#: what the property test may break in a value numpy could have written
KNOBS = ["spec", "order", "state", "args", "shape", "length", "data", "fortran", "version"]


def _fuzz() -> None:
    """The property test :func:`test_random_numpy_metadata_is_data_or_a_library_error` runs."""
    workdir = tempfile.mkdtemp()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    @st.composite
    def cases(draw: Any) -> tuple[Any, Any]:
        """(forged value, plan): a value numpy could have written, with up to two parts
        broken half of the time; the plan keeps what a correct loader must make of it."""
        broken = set(draw(st.lists(st.sampled_from(KNOBS), min_size=1, max_size=2))
                     if draw(st.booleans()) else ())
        spec = draw(st.sampled_from(INVALID_SPECS if "spec" in broken else VALID_SPECS))
        one_byte = spec in VALID_SPECS and np.dtype(spec).itemsize == 1
        order = draw(st.sampled_from(["!", "|", ""] if "order" in broken
                                     else ["<", ">", "="] + ["|"] * one_byte))
        state: list[Any] = [3, order, None, None, None, -1, -1, 0]
        if "state" in broken:
            index = draw(st.integers(0, 7).filter(lambda i: i != 1))
            state[index] = draw(st.sampled_from([1 << 40, -2, 2, 8, ("a",), (None, (4,)),
                                                 {"a": (None, 1 << 40)}]))
        args = ((spec, draw(st.sampled_from([1, None, "x"])), True) if "args" in broken
                else draw(st.sampled_from([(spec, False, True), (spec,), (spec, True)])))
        core = draw(st.sampled_from([CORE1, CORE2]))
        dt = dtype(spec, state=tuple(state), args=args)
        ok_dtype = (spec in VALID_SPECS and state[2:] == [None, None, None, -1, -1, 0]
                    and all(type(v) is int for v in state[5:]) and state[0] == 3
                    and type(state[0]) is int and all(type(a) is bool for a in args[1:])
                    and (order in ("<", ">", "=") or order == "|" and one_byte))
        real = np.dtype(order + spec) if ok_dtype else None
        kind = draw(st.sampled_from(["array", "array", "scalar", "dtype"]))
        if kind == "dtype":
            return dt, ("dtype", real)
        size = real.itemsize if real is not None else 8
        n = size if kind == "scalar" else 0
        shape: tuple[Any, ...] = ()
        if kind == "array":
            shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
            if "shape" in broken:
                bad = draw(st.sampled_from([-1, -3, 2**40, 2**64, 1.0, None, "dims"]))
                shape = (1,) * 40 if bad == "dims" else shape + (bad,)
            ints = all(type(d) is int and d >= 0 for d in shape) and len(shape) <= 32
            n = math.prod(shape) * size if ints and math.prod(shape) * size <= 2048 else 16
        if "length" in broken:
            n = max(0, n + draw(st.sampled_from([-size, -1, 1, size])))
        raw = draw(st.binary(min_size=n, max_size=n))
        value = list(raw[:4]) if "data" in broken else raw
        if kind == "scalar":
            ok = real is not None and type(value) is bytes and n == size
            return scalar(dt, value, core), ("scalar", real if ok else None, value)
        fortran = draw(st.sampled_from([2, "F", None] if "fortran" in broken
                                       else [False, True, 0, 1]))
        version = 2 if "version" in broken else 1
        ok = (real is not None and ints and type(value) is bytes
              and n == math.prod(shape) * size and fortran in (False, True) and version == 1)
        return (array(dt, shape, value, fortran, core, version),
                ("array", real if ok else None, value, shape, fortran))

    @settings(max_examples=200, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def check(case: tuple[Any, Any]) -> None:
        forged, plan = case
        path = save_forged(Path(workdir) / "fuzz.pth", forged)
        expect = plan[1]
        if plan[0] == "array" and expect is not None and math.prod(plan[3]) == 0:
            nonzero = math.prod(d for d in plan[3] if d)
            expect = expect if nonzero <= os.path.getsize(path) else None
        try:
            got = loader.read_checkpoint(path)["meta"]
        except wi.InitError as err:
            assert expect is None, ("refused a valid value", plan, err)
            assert type(err) is wi.UnsafeCheckpointError, (type(err), err)
            assert "allow_pickle=True" in str(err)
        else:
            assert expect is not None, ("loaded an invalid value", plan, got)
            if plan[0] == "dtype":
                assert isinstance(got, np.dtype) and got == expect
            elif plan[0] == "scalar":
                assert_same_value(got, np.frombuffer(plan[2], expect, count=1)[0])
            else:
                order = "F" if plan[4] else "C"
                want = np.frombuffer(plan[2], expect).reshape(plan[3], order=order).copy(order)
                assert_same_value(got, want)
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
        assert growth < MAX_GROWTH, growth

    check()
    print("fuzz: ok")


if __name__ == "__main__" and sys.argv[1:] == ["--fuzz"]:
    _fuzz()
