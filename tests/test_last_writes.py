"""The run's last fills go in place (no fresh memory, nothing kept), yet the run stays
transactional: a failure before them leaves the model bit-identical, a Ctrl-C during them
waits for the commit, and the values equal plan order. Fresh storages ask for huge pages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import weightinit as wi
from weightinit.execution import inplace, memory
from weightinit.execution.session import Session
from weightinit.planning import CheckpointRead, OpKind, Write

WIDTH = 1024  # 4 MiB weights: large enough for huge pages


class Tower(wi.BaseModule):
    """Rules fill ``big`` and ``norm`` whole; user code then rescales ``small`` in place."""

    def __init__(self, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg or [
            dict(type="Normal", layer="Linear", std=0.02, bias=0.0),
            dict(type="Constant", layer="LayerNorm", val=1.0, bias=0.0)])
        self.big = nn.Linear(WIDTH, WIDTH)
        self.small = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(WIDTH)


class Scales(wi.BaseModule):
    def __init__(self) -> None:
        super().__init__()
        self.tower = Tower()

    def init_weights(self) -> None:  # user code: the run must keep undo data while it runs
        super().init_weights()
        with torch.no_grad():
            self.tower.small.weight.mul_(0.5)


def pointers(model: nn.Module) -> dict[str, int]:
    return {n: t.untyped_storage().data_ptr() for n, t in model.state_dict().items()}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def test_last_fills_are_written_in_place_after_user_code():
    torch.manual_seed(0)
    model = Scales()
    before = pointers(model)
    model.init_weights()
    after = pointers(model)
    # filled after the last user call: the memory the tensors had
    for name in ("tower.big.weight", "tower.big.bias", "tower.norm.weight", "tower.norm.bias"):
        assert after[name] == before[name], name
    w = model.tower.big.weight
    assert abs(float(w.detach().std()) - 0.02) < 0.002 and float(w.detach().mean().abs()) < 0.001
    assert torch.all(model.tower.norm.weight == 1.0) and torch.all(model.tower.big.bias == 0)
    record = wi.get_init_record(model)
    assert record["tower.big.weight"].info.startswith("NormalInit")
    assert record["tower.small.weight"].kind == "user"


def test_values_equal_a_run_that_keeps_undo_data(monkeypatch):
    """The split changes where values go, never which: a seeded run gives the same numbers
    with the last fills in place as with every write kept."""
    import weightinit.execution.session as session_module

    ours = Scales()
    ours.init_weights(seed=5)
    monkeypatch.setattr(session_module, "split_last", lambda writes: (writes, ()))
    kept = Scales()
    kept.init_weights(seed=5)
    for name, value in ours.state_dict().items():
        assert torch.equal(value, kept.state_dict()[name]), name


class Head(wi.BaseModule):
    def __init__(self, path: str) -> None:
        super().__init__(init_cfg=dict(type="Pretrained", checkpoint=path, strict=True))
        self.fc = nn.Linear(8, 8)


def test_failure_after_the_last_user_call_leaves_the_model_untouched(tmp_path, monkeypatch):
    """A strict checkpoint holding NaN fails once its entries are read, before anything is
    written in place: the fills and the copies that go last have not run, and every tensor
    is bit-identical to before."""
    import weightinit.execution.session as session_module

    path = str(tmp_path / "nan.safetensors")
    save_file({"fc.weight": torch.full((8, 8), float("nan")), "fc.bias": torch.zeros(8)}, path)
    model = Tower()
    model.head = Head(path)
    before, ptrs = snapshot(model), pointers(model)
    splits = []
    monkeypatch.setattr(session_module, "split_last",
                        lambda writes: splits.append(inplace.split_last(writes)) or splits[-1])
    with pytest.raises(wi.CheckpointMismatchError, match="NaN or infinity"):
        model.init_weights()
    kept, last = splits[-1]
    assert sum(isinstance(w.op, CheckpointRead) for w in last) == 2 and len(last) >= 6
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert pointers(model) == ptrs
    assert not model.is_init and wi.get_init_record(model) is None


class Loaded(wi.BaseModule):
    """A checkpoint read by a child, user code after it (the run keeps undo data)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.head = Head(path)
        self.other = nn.Linear(8, 8)

    def init_weights(self) -> None:
        super().init_weights()
        with torch.no_grad():
            self.other.weight.mul_(0.5)


def test_last_checkpoint_reads_are_copied_in_place(tmp_path):
    """The entries read after the last user call are copied into the memory the tensors
    have; an entry in another dtype than its tensor is converted first, with its undo kept
    (the conversion's NaN check is on what was written)."""
    path = str(tmp_path / "head.safetensors")
    weight = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    save_file({"fc.weight": weight, "fc.bias": torch.ones(8, dtype=torch.float64)}, path)
    model = Loaded(path)
    before = pointers(model)
    model.init_weights()
    after = pointers(model)
    assert after["head.fc.weight"] == before["head.fc.weight"]  # copied in place
    assert after["head.fc.bias"] != before["head.fc.bias"]  # float64 -> float32: kept
    assert torch.equal(model.head.fc.weight, weight)
    assert torch.equal(model.head.fc.bias, torch.ones(8))
    assert wi.get_init_record(model)["head.fc.weight"].kind == "pretrained"


def test_nan_in_a_last_checkpoint_read_warns_once(tmp_path):
    """Not strict: an entry holding NaN is reported once (read before the in-place copies,
    not again after them) and copied as it is."""
    path = str(tmp_path / "nan.safetensors")
    save_file({"fc.weight": torch.full((8, 8), float("nan")), "fc.bias": torch.zeros(8)}, path)
    model = Loaded(path)
    model.head.init_cfg = dict(type="Pretrained", checkpoint=path)
    with pytest.warns(wi.InitWarning, match="NaN or infinity") as caught:
        model.init_weights()
    found = [str(w.message) for w in caught if "NaN or infinity" in str(w.message)]
    assert len(found) == 1 and found[0].count("fc.weight") == 1, found
    assert torch.isnan(model.head.fc.weight).all()


def test_ctrl_c_during_the_last_fills_waits_for_the_commit(monkeypatch):
    """SIGINT while the in-place fills run: the run finishes and commits (the model whole,
    its record attached), then KeyboardInterrupt is raised."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    real = Session.flush
    sent = []

    def flush(self, writes, prologue=None, keep=True):
        if not keep and writes and not sent:
            sent.append(len(writes))
            signal.raise_signal(signal.SIGINT)  # arrives now, inside the last fills
        return real(self, writes, prologue, keep)

    monkeypatch.setattr(Session, "flush", flush)
    torch.manual_seed(0)
    model = Scales()
    with pytest.raises(KeyboardInterrupt):
        model.init_weights()
    assert sent and sent[0] >= 4
    assert model.is_init and wi.get_init_record(model) is not None
    assert torch.all(model.tower.norm.weight == 1.0)
    assert abs(float(model.tower.big.weight.detach().std()) - 0.02) < 0.002
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_ctrl_c_before_the_last_fills_rolls_back(monkeypatch):
    """An interrupt while user code runs is not held: the run is undone at once."""
    class Interrupted(Scales):
        def init_weights(self) -> None:
            super().init_weights()
            raise KeyboardInterrupt

    model = Interrupted()
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        model.init_weights()
    assert all(torch.equal(v, before[n]) for n, v in model.state_dict().items())
    assert not model.is_init


# ----------------------------------------------------------------- which writes go last


def _write(kind: OpKind, group=None, elementwise=True, checkpoint=None) -> Write:
    """A planned write with only what :func:`split_last` looks at (``checkpoint``: a read of
    an entry of that dtype into a float32 tensor)."""
    if checkpoint is not None:
        return Write(torch.empty(4), _FakeRead(checkpoint))
    op = SimpleNamespace(kind=kind, group=group,
                         elementwise=lambda shape: ("normal", (0.0, 1.0)) if elementwise else None)
    return Write(torch.empty(4), op)


class _FakeRead(CheckpointRead):
    def __init__(self, dtype: torch.dtype) -> None:  # (only what split_last looks at)
        object.__setattr__(self, "state", SimpleNamespace(dtype=lambda key: dtype))
        object.__setattr__(self, "key", "w")

    kind = OpKind.CHECKPOINT
    group = None

    def elementwise(self, shape):
        return None


def test_split_keeps_plan_order_around_writes_that_touch_other_tensors():
    fill_a = _write(OpKind.RULE)
    read_b = _write(OpKind.CHECKPOINT, checkpoint=torch.float32)
    group_c = _write(OpKind.DEFAULT, group=7, elementwise=False)
    fill_d = _write(OpKind.RULE)
    ortho_e = _write(OpKind.RULE, elementwise=False)  # draws from the generator fills use
    fill_f = _write(OpKind.DEFAULT)
    kept, last = inplace.split_last((fill_a, read_b, group_c, fill_d, ortho_e, fill_f))
    # a grouped write may read a, an orthogonal fill draws after d: both stay before them
    assert kept == (fill_a, read_b, group_c, fill_d, ortho_e)
    assert last == (fill_f,)
    kept, last = inplace.split_last((fill_a, read_b, fill_d, read_b))
    assert kept == () and last == (fill_a, read_b, fill_d, read_b)  # copies in place too
    convert = _write(OpKind.CHECKPOINT, checkpoint=torch.float64)  # converted: undo kept
    kept, last = inplace.split_last((fill_a, convert, fill_d, read_b, convert))
    assert kept == (convert, convert)  # fills and copies move past checkpoint reads only
    assert last == (fill_a, fill_d, read_b)


# ----------------------------------------------------------------------------- huge pages


def _vma_flags(address: int) -> dict[str, str]:
    """The ``/proc/self/smaps`` fields of the mapping holding ``address``."""
    fields: dict[str, str] = {}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
                continue
            if inside:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    return fields


def _in_huge_pages(tensor: torch.Tensor) -> bool:
    """The first whole 2 MiB block of ``tensor``'s memory is in a mapping marked for huge
    pages (``hg``)."""
    start = tensor.untyped_storage().data_ptr()
    block = -(-start // memory.HUGE_PAGE) * memory.HUGE_PAGE
    return "hg" in _vma_flags(block).get("VmFlags", "").split()


@pytest.fixture
def huge_pages(monkeypatch):
    """``WEIGHTINIT_HUGE_PAGES=1`` for the test (the switch is read once per process)."""
    monkeypatch.setenv("WEIGHTINIT_HUGE_PAGES", "1")
    memory._madvise.cache_clear()
    yield
    monkeypatch.delenv("WEIGHTINIT_HUGE_PAGES")
    memory._madvise.cache_clear()


def _thp_possible() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _thp_possible(), reason="transparent huge pages are off or not Linux")
def test_fresh_storages_ask_for_huge_pages(huge_pages):
    ref = torch.empty(WIDTH, WIDTH)
    fresh = memory.empty_like(ref)
    assert fresh.shape == ref.shape and fresh.dtype == ref.dtype
    fresh.normal_()
    assert _in_huge_pages(fresh)
    small = memory.empty((16,))
    assert not memory.advise_huge_pages(small)  # under MIN_BYTES: left alone


@pytest.mark.parametrize("value", [None, "0", "yes"])
def test_huge_pages_are_off_unless_asked_for(value):
    """Off by default (and for any value but 1): storages are as torch allocates them."""
    code = ("from weightinit.execution import memory; import torch;"
            "print(memory.huge_pages_available(),"
            " memory.advise_huge_pages(torch.empty(1 << 21)))")
    env = {k: v for k, v in os.environ.items() if k != "WEIGHTINIT_HUGE_PAGES"}
    if value is not None:
        env["WEIGHTINIT_HUGE_PAGES"] = value
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.skipif(not _thp_possible(), reason="transparent huge pages are off or not Linux")
def test_user_overwrite_gets_a_huge_page_storage_and_undo_still_works(huge_pages):
    class Overwrites(wi.BaseModule):
        def __init__(self, fail: bool) -> None:
            super().__init__()
            self.fc = nn.Linear(WIDTH, WIDTH)
            self.fail = fail

        def init_weights(self) -> None:
            nn.init.xavier_uniform_(self.fc.weight)  # whole (its draw kept pending) ...
            self.total = self.fc.weight.sum()  # ... then read: drawn now, a fresh storage
            if self.fail:
                raise RuntimeError("user code failed")

    ok = Overwrites(fail=False)
    old = ok.fc.weight.untyped_storage().data_ptr()
    ok.init_weights()
    ptr = ok.fc.weight.untyped_storage().data_ptr()
    assert ptr != old and _in_huge_pages(ok.fc.weight)
    bad = Overwrites(fail=True)
    before = bad.fc.weight.detach().clone()
    with pytest.raises(RuntimeError, match="user code failed"):
        bad.init_weights()
    assert torch.equal(bad.fc.weight, before)


class OrthoChild(wi.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Orthogonal", layer="Linear"))
        self.lin = nn.Linear(16, 16)


class Mixed(wi.BaseModule):
    """A parent's Normal fills, then a child's orthogonal fill (which draws from the same
    generator), then user code: the run keeps undo data and splits its last writes."""

    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Normal", layer="Linear", std=0.5))
        self.a = nn.Linear(16, 16)
        self.ortho = OrthoChild()
        self.c = nn.Linear(16, 16)

    def init_weights(self) -> None:
        super().init_weights()


def test_unseeded_draws_keep_plan_order(monkeypatch):
    """Unseeded, values come from torch's generator in write order: moving a fill past the
    orthogonal fill would swap their draws. The split only moves fills past checkpoint
    reads, so the values equal a run that keeps every write in order."""
    import weightinit.execution.session as session_module

    torch.manual_seed(11)
    ours = Mixed()
    ours.init_weights()
    monkeypatch.setattr(session_module, "split_last", lambda writes: (writes, ()))
    torch.manual_seed(11)
    kept = Mixed()
    kept.init_weights()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, kept.state_dict()[name]), name
    w = ours.ortho.lin.weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-4)
