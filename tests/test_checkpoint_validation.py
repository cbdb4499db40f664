"""Checkpoint entries that can not be loaded are refused before any write; a read that
fails after planning leaves the model as it was."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

import weightinit as wi
from weightinit.checkpoint import loader, pickles
from weightinit.rules import PretrainedInit


class Net(nn.Module):
    def __init__(self, extra: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 4)
        if extra:  # not in the checkpoint: gets its PyTorch default
            self.head = nn.Linear(4, 2)


def buffers(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.named_buffers()}


def assert_still_deferred(m: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Every parameter still on meta; buffers (real even under deferred()) unchanged."""
    assert all(p.is_meta for p in m.parameters())
    now = dict(m.named_buffers())
    assert now.keys() == before.keys()
    for k, v in now.items():
        assert torch.equal(v, before[k]), k


def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_same(m: nn.Module, before: dict[str, torch.Tensor]) -> None:
    now = m.state_dict()
    assert now.keys() == before.keys()
    for k, v in now.items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


@pytest.fixture
def source() -> Net:
    torch.manual_seed(1)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_()
        net.bn.running_var.uniform_(1, 2)
    return net


def both_apis(path: str, **kw) -> list[Callable[[nn.Module], object]]:
    """Load ``path`` with ``load_checkpoint`` and with an ``initialize`` Pretrained rule."""
    return [lambda m: wi.load_checkpoint(m, path, **kw),
            lambda m: wi.initialize(m, dict(type="Pretrained", checkpoint=path, **kw))]


def refused(model: nn.Module, load: Callable[[nn.Module], object], err_type: type,
            *fragments: str) -> str:
    """``load(model)`` raises exactly ``err_type`` naming ``fragments``; model untouched."""
    before = snapshot(model)
    record = wi.get_init_record(model)
    with pytest.raises(err_type) as info:
        load(model)
    assert type(info.value) is err_type, type(info.value)
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert_same(model, before)
    assert wi.get_init_record(model) is record
    return text


# ------------------------------------------------------------------ raw safetensors files

#: bits per element of the safetensors dtypes used below
BITS = {"F32": 32, "F6_E2M3": 6, "F4": 4, "F8_E8M0": 8, "C64": 64}


def write_raw_safetensors(path: Path, entries: dict[str, tuple[str, list[int], bytes]]) -> str:
    """A safetensors file whose header says exactly ``{name: (dtype, shape, data)}``."""
    header: dict[str, dict] = {}
    body = b""
    for name, (dtype, shape, data) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return str(path)


def raw_entry(dtype: str, shape: list[int]) -> tuple[str, list[int], bytes]:
    numel = 1
    for n in shape:
        numel *= n
    return dtype, shape, bytes(numel * BITS[dtype] // 8)


def net_entries(net: nn.Module) -> dict[str, tuple[str, list[int], bytes]]:
    out = {}
    for k, v in net.state_dict().items():
        if v.dtype == torch.float32:
            out[k] = ("F32", list(v.shape), v.contiguous().numpy().tobytes())
    return out


class Cell(nn.Module):
    """One parameter of any shape and dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.w = nn.Parameter(torch.full(shape, 0.5, dtype=dtype))


# ------------------------------------------------------------------ 1. map_location='meta'


@pytest.mark.parametrize("map_location", ["meta", torch.device("meta"), {"cpu": "meta"},
                                          {"cuda:0": torch.device("meta")}])
def test_meta_map_location_refused_when_rule_is_built(map_location):
    with pytest.raises(wi.InitValueError) as info:
        PretrainedInit("w.pth", map_location=map_location)
    assert type(info.value) is wi.InitValueError
    text = str(info.value)
    assert "map_location=" in text and "meta" in text and "no values" in text
    assert "Fix: use map_location='cpu'" in text and "weightinit.deferred()" in text


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_meta_map_location_refused_by_both_apis_before_reading(tmp_path, source, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), str(path))
    for map_location in ("meta", torch.device("meta")):
        for load in both_apis(str(path), map_location=map_location):
            refused(Net(), load, wi.InitValueError, "map_location=", "meta", "Fix:")


def test_meta_map_location_refused_for_deferred_model(tmp_path, source):
    path = str(tmp_path / "w.pth")
    torch.save(source.state_dict(), path)
    with wi.deferred():
        m = Net()
    kept = buffers(m)
    with pytest.raises(wi.InitValueError, match="map_location"):
        wi.load_checkpoint(m, path, map_location="meta")
    assert_still_deferred(m, kept)


def test_map_location_that_is_not_a_device_is_refused():
    with pytest.raises(wi.InitValueError, match="'gpu0' is not a device. Fix: use 'cpu'"):
        PretrainedInit("w.pth", map_location="gpu0")


@pytest.mark.parametrize("map_location", ["cpu", torch.device("cpu"), None, {"cuda:0": "cpu"},
                                          "cuda", "cuda:1"])
def test_real_map_locations_are_accepted(map_location):
    assert PretrainedInit("w.pth", map_location=map_location).map_location is map_location


def test_map_location_callable_still_loads_pth(tmp_path, source):
    path = str(tmp_path / "w.pth")
    torch.save(source.state_dict(), path)
    m = Net()
    wi.load_checkpoint(m, path, map_location=lambda storage, loc: storage)
    assert_same(m, snapshot(source))


def test_map_location_mapping_for_safetensors_is_a_clear_error(tmp_path, source):
    path = str(tmp_path / "w.safetensors")
    save_file(source.state_dict(), path)
    refused(Net(), lambda m: wi.load_checkpoint(m, path, map_location={"cpu": "cpu"}),
            wi.CheckpointError, "only works for PyTorch (.pth) files",
            "Fix: give a device for .safetensors")


# ------------------------------------------------------------------ 2. safetensors dtypes


def test_dtype_safetensors_does_not_know_is_refused_when_opened(tmp_path, source):
    entries = net_entries(source)
    entries["fc.weight"] = ("XX", [4, 4], bytes(64))
    path = write_raw_safetensors(tmp_path / "xx.safetensors", entries)
    for load in both_apis(path):
        text = refused(Net(), load, wi.CheckpointError, path, "'XX'", "Fix:")
        assert "does not know" in text


def test_dtype_torch_can_not_load_is_refused_while_planning(tmp_path, source):
    entries = net_entries(source)
    entries["fc.weight"] = raw_entry("F6_E2M3", [4, 4])
    path = write_raw_safetensors(tmp_path / "f6.safetensors", entries)
    try:  # does this safetensors parse the header? (then the entry is refused, by key)
        safe_open(path, framework="pt", device="cpu")
        fragments: tuple[str, ...] = ("'fc.weight'", "can not be loaded into PyTorch")
    except Exception:
        fragments = ()
    for load in both_apis(path):
        refused(Net(), load, wi.CheckpointError, path, "F6_E2M3", "Fix:", *fragments)
    with wi.deferred():
        m = Net()
    kept = buffers(m)
    with pytest.raises(wi.CheckpointError, match="F6_E2M3"):
        wi.load_checkpoint(m, path)
    assert_still_deferred(m, kept)


def test_unloadable_dtype_of_an_entry_that_is_not_loaded_is_only_reported(tmp_path, source):
    entries = net_entries(source)
    entries["extra.w"] = raw_entry("F6_E2M3", [4, 4])
    path = write_raw_safetensors(tmp_path / "f6.safetensors", entries)
    try:
        safe_open(path, framework="pt", device="cpu")
    except Exception:
        pytest.skip("this safetensors refuses F6_E2M3 headers when opening")
    m = Net()
    report = wi.load_checkpoint(m, path)
    assert report.unexpected == ["extra.w"]
    assert torch.equal(m.fc.weight, source.fc.weight)


def test_packed_float4_is_refused_while_planning(tmp_path):
    path = write_raw_safetensors(tmp_path / "f4.safetensors", {"w": raw_entry("F4", [4, 8])})
    try:
        safe_open(path, framework="pt", device="cpu")
    except Exception:
        pytest.skip("this safetensors refuses F4 headers when opening")
    for load in both_apis(path):
        refused(Cell((4, 8)), load, wi.CheckpointError, path, "'w'", "Fix:")


def test_float8_e8m0_entry_loads(tmp_path):
    if not hasattr(torch, "float8_e8m0fnu"):
        pytest.skip("torch has no float8_e8m0fnu")
    value = torch.arange(16, dtype=torch.uint8) + 120  # 2 ** (n - 127)
    path = write_raw_safetensors(tmp_path / "e8m0.safetensors",
                                 {"w": ("F8_E8M0", [4, 4], value.numpy().tobytes())})
    m = Cell((4, 4))
    wi.load_checkpoint(m, path)
    expected = torch.pow(2.0, value.float() - 127).reshape(4, 4)
    assert torch.equal(m.w.detach(), expected)


def test_dtype_table_matches_what_safetensors_reads(tmp_path):
    """Each dtype the table maps to a torch dtype is what safetensors reads the entry as."""
    bits = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "I32": 32, "U32": 32, "I64": 64,
            "U64": 64, "F16": 16, "BF16": 16, "F32": 32, "F64": 64, "C64": 64, "F8_E5M2": 8,
            "F8_E4M3": 8, "F8_E5M2FNUZ": 8, "F8_E4M3FNUZ": 8, "F8_E8M0": 8}
    checked = 0
    for name, n in bits.items():
        dtype = getattr(torch, loader._SAFETENSORS_DTYPES[name], None)
        path = write_raw_safetensors(tmp_path / f"{name}.safetensors",
                                     {"w": (name, [2, 2], bytes(4 * n // 8))})
        try:
            safe_open(path, framework="pt", device="cpu")
        except Exception:
            continue  # an older safetensors: refused when opened
        state = loader.read_checkpoint(path)
        if dtype is None:
            with pytest.raises(wi.CheckpointError, match=name):
                state.dtype("w")
            continue
        assert state.dtype("w") == dtype == state.get("w").dtype, name
        checked += 1
    assert checked >= 13


# ------------------------------------------------------------------ 3. complex into real


# Complex into real is a dtype-kind mismatch (tests/test_checkpoint_checks.py has the rest):
# mismatch="error" refuses it before any write; the default "skip" reports and skips it.


def test_complex_pth_entry_into_real_tensor_is_refused(tmp_path, source):
    state = source.state_dict()
    state["fc.weight"] = torch.complex(state["fc.weight"], torch.ones(4, 4))
    path = str(tmp_path / "c.pth")
    torch.save(state, path)
    for load in both_apis(path, mismatch="error"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "discards the imaginary part" warning either
            refused(Net(), load, wi.CheckpointMismatchError, path, "'fc.weight'",
                    "complex64", "model float32", "Fix:")


def test_complex_safetensors_entry_into_real_tensor_is_refused(tmp_path, source):
    state = source.state_dict()
    state["fc.weight"] = torch.complex(state["fc.weight"], torch.ones(4, 4))
    path = str(tmp_path / "c.safetensors")
    save_file(state, path)
    for load in both_apis(path, mismatch="error"):
        refused(Net(), load, wi.CheckpointMismatchError, path, "'fc.weight'", "complex64",
                "model float32", "Fix:")
    m = Net()
    before = m.fc.weight.detach().clone()
    with pytest.warns(wi.CheckpointKeysWarning, match="dtype mismatch"):
        report = wi.load_checkpoint(m, path)
    assert report.dtype_mismatched == [("fc.weight", torch.complex64, torch.float32)]
    assert torch.equal(m.fc.weight.detach(), before)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_complex_into_complex_and_real_into_complex_load(tmp_path, suffix):
    value = torch.complex(torch.randn(3), torch.randn(3))
    for saved, expected in ((value, value), (value.real.contiguous(), value.real + 0j)):
        path = str(tmp_path / f"w{suffix}")
        if suffix == ".pth":
            torch.save({"w": saved}, path)
        else:
            save_file({"w": saved}, path)
        m = Cell((3,), torch.complex64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wi.load_checkpoint(m, path)
        assert torch.equal(m.w.detach(), expected)


# ------------------------------------------------------------------ 4. sparse, quantized, meta


def _weird(kind: str) -> torch.Tensor:
    w = torch.randn(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # beta / deprecation warnings of these formats
        if kind == "coo":
            return w.to_sparse()
        if kind == "csr":
            return w.to_sparse_csr()
        if kind == "quantized":
            return torch.quantize_per_tensor(w, 0.1, 0, torch.qint8)
        if kind == "quantized_per_channel":
            return torch.quantize_per_channel(w, torch.full((4,), 0.1),
                                              torch.zeros(4, dtype=torch.long), 0, torch.qint8)
        return torch.empty(4, 4, device="meta")


WEIRD = {"coo": "is a sparse_coo tensor", "csr": "is a sparse_csr tensor",
         "quantized": "is a quantized tensor (torch.qint8)",
         "quantized_per_channel": "is a quantized tensor (torch.qint8)",
         "meta": "is on the meta device"}
FIXES = {"coo": "t.to_dense()", "csr": "t.to_dense()", "quantized": "t.dequantize()",
         "quantized_per_channel": "t.dequantize()", "meta": "the tensor from a model that has values"}


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("kind", list(WEIRD))
def test_non_dense_pth_entries_are_refused_by_key(tmp_path, source, kind, nested):
    state = source.state_dict()
    state["fc.weight"] = _weird(kind)
    path = str(tmp_path / f"{kind}.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"state_dict": state, "meta": {"epoch": 1}} if nested else state, path)
    for load in both_apis(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load's TypedStorage deprecation
            refused(Net(), load, wi.CheckpointError, path, "'fc.weight'", WEIRD[kind],
                    f"Fix: save {FIXES[kind]}")
    # a deferred model stays deferred
    with wi.deferred():
        m = Net()
    kept = buffers(m)
    with warnings.catch_warnings(), pytest.raises(wi.CheckpointError,
                                                  match=re.escape(WEIRD[kind])):
        warnings.simplefilter("ignore")
        wi.load_checkpoint(m, path)
    assert_still_deferred(m, kept)


@pytest.mark.parametrize("kind", list(WEIRD))
def test_non_dense_entry_under_another_prefix_is_not_checked(tmp_path, source, kind):
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["neck.w"] = _weird(kind)
    path = str(tmp_path / f"{kind}.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(state, path)
        m = Net()
        wi.load_checkpoint(m, path, prefix="backbone")
    assert_same(m, snapshot(source))


# ------------------------------------------------------------------ 5. reads after planning


def _save(net: nn.Module, path: Path) -> str:
    if path.suffix == ".pth":
        torch.save(net.state_dict(), path)
    else:
        save_file(net.state_dict(), str(path))
    return str(path)


def fail_on_call(monkeypatch, n: int, action: Callable[[], None] | None = None) -> list[str]:
    """``CheckpointState.get`` raises :class:`CheckpointError` on call ``n`` (or, with
    ``action``, runs it before call ``n`` and then reads as usual)."""
    original = loader.CheckpointState.get
    calls: list[str] = []

    def get(self, key):
        calls.append(key)
        if len(calls) == n:
            if action is None:
                raise wi.CheckpointError(f"{self.source}: entry {key!r} vanished")
            action()
        return original(self, key)

    monkeypatch.setattr(loader.CheckpointState, "get", get)
    return calls


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_failed_read_leaves_eager_model_and_record_as_they_were(tmp_path, monkeypatch, source,
                                                                suffix):
    path = _save(source, tmp_path / f"w{suffix}")
    m = Net()
    wi.initialize(m, dict(type="Constant", val=2, layer="Linear"))
    record = wi.get_init_record(m)
    as_dict = record.to_dict()
    for load in both_apis(path):
        calls = fail_on_call(monkeypatch, 2)
        refused(m, load, wi.CheckpointError, "vanished")
        assert len(calls) == 2  # planning read nothing; the first write happened
        assert wi.get_init_record(m).to_dict() == as_dict
        monkeypatch.undo()
    wi.load_checkpoint(m, path)  # and a retry loads
    assert_same(m, snapshot(source))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_failed_read_leaves_deferred_model_on_meta_and_retry_is_exact(tmp_path, monkeypatch,
                                                                      source, suffix):
    path = _save(source, tmp_path / f"w{suffix}")

    def build() -> Net:
        with wi.deferred():
            return Net(extra=True)

    clean = build()
    wi.load_checkpoint(clean, path, seed=7)
    expected = snapshot(clean)

    cfg = dict(type="Pretrained", checkpoint=path)
    for load in (lambda m: wi.load_checkpoint(m, path, seed=7),
                 lambda m: wi.initialize(m, cfg, seed=7)):
        m = build()
        kept = buffers(m)
        fail_on_call(monkeypatch, 2)
        with pytest.raises(wi.CheckpointError, match="vanished"):
            load(m)
        monkeypatch.undo()
        assert_still_deferred(m, kept)
        assert wi.get_init_record(m) is None
        load(m)
        assert_same(m, expected)
        assert not any(t.is_meta for t in m.state_dict().values())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_file_truncated_after_planning_is_an_error_not_a_crash(tmp_path, monkeypatch, source,
                                                               suffix):
    path = _save(source, tmp_path / f"w{suffix}")
    size = os.path.getsize(path)
    eager = Net()
    fail_on_call(monkeypatch, 2, lambda: os.truncate(path, size // 2))
    refused(eager, lambda m: wi.load_checkpoint(m, path), wi.CheckpointError, path,
            "truncated after it was opened", "Fix:")
    monkeypatch.undo()

    _save(source, Path(path))
    with wi.deferred():
        m = Net()
    kept = buffers(m)
    fail_on_call(monkeypatch, 2, lambda: os.truncate(path, size // 2))
    with pytest.raises(wi.CheckpointError, match="truncated"):
        wi.initialize(m, dict(type="Pretrained", checkpoint=path))
    assert_still_deferred(m, kept)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_file_rewritten_in_place_after_planning_is_an_error(tmp_path, monkeypatch, source,
                                                            suffix):
    path = _save(source, tmp_path / f"w{suffix}")

    def rewrite() -> None:
        data = Path(path).read_bytes()
        with open(path, "r+b") as fh:
            fh.write(data)  # same bytes, same size: only the modification time changes
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    fail_on_call(monkeypatch, 2, rewrite)
    refused(Net(), lambda m: wi.load_checkpoint(m, path), wi.CheckpointError,
            "rewritten in place", "Fix:")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_file_replaced_after_planning_loads_what_was_planned(tmp_path, monkeypatch, source,
                                                             suffix):
    path = _save(source, tmp_path / f"w{suffix}")
    other = Net()
    with torch.no_grad():
        for p in other.parameters():
            p.fill_(9)

    def replace() -> None:  # write a new file and rename it over the old one
        tmp = _save(other, tmp_path / f"new{suffix}")
        os.replace(tmp, path)

    fail_on_call(monkeypatch, 2, replace)
    m = Net()
    wi.load_checkpoint(m, path)
    assert_same(m, snapshot(source))


def test_safetensors_read_error_is_a_checkpoint_error(tmp_path, source):
    path = str(tmp_path / "w.safetensors")
    save_file(source.state_dict(), path)
    state = loader.read_checkpoint(path)

    class Broken:
        def get_tensor(self, name):
            from safetensors import SafetensorError

            raise SafetensorError("boom")

    state._lazy["fc.weight"] = (Broken(), "fc.weight")
    with pytest.raises(wi.CheckpointError, match=r"can not read entry 'fc.weight': boom"):
        state.get("fc.weight")


# ------------------------------------------------------------------ safe-loader refusals


@pytest.mark.parametrize("wants", ["torch.per_channel_affine",
                                   "torch._utils._rebuild_sparse_tensor"])
def test_safe_loader_refusing_a_torch_tensor_format_is_not_called_unsafe(tmp_path, monkeypatch,
                                                                         source, wants):
    """An older torch's ``weights_only`` loader may not rebuild some tensor formats; that is
    a plain CheckpointError, not a claim that the file needs arbitrary code."""
    path = str(tmp_path / "w.pth")
    torch.save(source.state_dict(), path)

    def load(*args, **kwargs):
        raise pickle.UnpicklingError(f"Weights only load failed. Unsupported global: GLOBAL "
                                     f"{wants} was not an allowed global by default.")

    monkeypatch.setattr(loader.torch, "load", load)
    monkeypatch.setattr(pickles, "fast_load", lambda *a: (False, None))  # torch.load reads it
    for api in both_apis(path):
        text = refused(Net(), api, wi.CheckpointError, path, wants, "safe loader",
                       "not third-party code", "Fix: save dense tensors")
        assert "arbitrary code" not in text


def test_pickled_module_is_still_unsafe(tmp_path, source):
    path = str(tmp_path / "m.pth")
    torch.save(source, path)
    refused(Net(), lambda m: wi.load_checkpoint(m, path), wi.UnsafeCheckpointError,
            "needs arbitrary code", "allow_pickle=True")
