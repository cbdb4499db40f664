"""User code that loads a checkpoint itself: ``load_state_dict`` from what ``torch.load``
returned hands those tensors' storages to the parameters (no copy, no new memory), never
memory torch did not allocate (NumPy arrays, mapped files), and never leaves a parameter
sharing memory with a tensor that outlives the run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.execution import records


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class LoadsItself(wi.BaseModule):
    """Reads its own checkpoint in ``init_weights`` (as MMSegmentation's ViT does)."""

    def __init__(self, path: str, keep: bool = False, mmap: bool = False,
                 fail: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.path, self.keep, self.mmap, self.fail = path, keep, mmap, fail
        self.loaded_ptrs: dict[str, int] = {}

    def init_weights(self) -> None:
        state = torch.load(self.path, weights_only=True, mmap=self.mmap)
        self.loaded_ptrs = {k: _ptr(v) for k, v in state.items()}
        self.load_state_dict(state)
        if self.keep:
            self.kept = state
        if self.fail:
            raise RuntimeError("user code failed after loading")


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    state = {"fc.weight": torch.randn(32, 64), "fc.bias": torch.randn(32)}
    path = str(tmp_path / "ckpt.pth")
    torch.save(state, path)
    return path, state


def test_loaded_records_are_handed_over_not_copied(saved):
    path, state = saved
    model = LoadsItself(path)
    model.init_weights()
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert torch.equal(model.fc.bias, state["fc.bias"])
    # the parameters now own the memory torch.load read the records into
    assert _ptr(model.fc.weight) == model.loaded_ptrs["fc.weight"]
    assert _ptr(model.fc.bias) == model.loaded_ptrs["fc.bias"]
    assert wi.get_init_record(model)["fc.weight"].info == (
        "load_state_dict(strict=True, assign=False) in LoadsItself.init_weights")


def test_a_loaded_dict_user_code_keeps_gets_its_own_memory(saved):
    path, state = saved
    model = LoadsItself(path, keep=True)
    model.init_weights()
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert _ptr(model.fc.weight) != _ptr(model.kept["fc.weight"])  # no sharing after the run
    model.kept["fc.weight"].zero_()
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_mapped_files_are_copied(saved):
    path, state = saved
    model = LoadsItself(path, mmap=True)
    model.init_weights()
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert _ptr(model.fc.weight) != model.loaded_ptrs["fc.weight"]


def test_numpy_memory_is_copied():
    array = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)

    class FromNumpy(wi.BaseModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 32)

        def init_weights(self) -> None:
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(array))

    model = FromNumpy()
    model.init_weights()
    assert _ptr(model.fc.weight) != array.ctypes.data
    array[:] = 0  # the caller's array is not the parameter
    assert float(model.fc.weight.detach().abs().sum()) > 0


def test_failure_after_loading_restores_the_model(saved):
    path, _ = saved
    model = LoadsItself(path, fail=True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ptrs = {k: _ptr(v) for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="failed after loading"):
        model.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and _ptr(v) == ptrs[k], k
    assert not model.is_init


def test_torch_load_is_put_back_and_a_later_replacement_stays(saved):
    path, _ = saved
    original = torch.load
    model = LoadsItself(path)
    model.init_weights()
    assert torch.load is original

    def theirs(*args, **kwargs):
        return original(*args, **kwargs)

    class Replaces(LoadsItself):
        def init_weights(self) -> None:
            torch.load = theirs  # a library patching torch.load meanwhile
            super().init_weights()

    try:
        Replaces(path).init_weights()
        assert torch.load is theirs
    finally:
        torch.load = original


def test_loads_outside_a_run_report_nothing(saved):
    path, _ = saved
    seen = []
    with records.loads_seen(seen.append):
        torch.load(path, weights_only=True)
    torch.load(path, weights_only=True)  # (outside: torch's own function again)
    assert len(seen) == 1 and sorted(t.shape for t in seen[0]) == [(32,), (32, 64)]
    assert records.loaded_tensors({"a": [torch.ones(2), (torch.zeros(1),)], "b": 3}) != []


class CountsWatchedOps(wi.BaseModule):
    """Loads a checkpoint in ``init_weights`` and notes how many ops the run's watch saw
    during the load alone; ``map_location`` may be user code that writes the model."""

    def __init__(self, path: str, where=None, source=None) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.path, self.where, self.source = path, where, source
        self.seen_in_load = -1

    def init_weights(self) -> None:
        before = SEEN[0]
        state = torch.load(self.source or self.path, map_location=self.where, weights_only=True)
        self.seen_in_load = SEEN[0] - before
        self.fc.weight.data.copy_(state["fc.weight"])


SEEN = [0]


@pytest.fixture
def counted(monkeypatch):
    from weightinit.execution.pending import Pending
    original = Pending.before_op

    def before_op(self, func, args, kwargs):
        SEEN[0] += 1
        return original(self, func, args, kwargs)

    monkeypatch.setattr(Pending, "before_op", before_op)


@pytest.mark.parametrize("where", [None, "cpu", torch.device("cpu"), {"cpu": "cpu"}])
def test_a_plain_load_in_user_code_is_not_watched_op_by_op(saved, counted, where):
    """A load from a path, with torch's unpickler and a device map_location, writes only new
    tensors: none of its ops passes through the watch; the copy after it still does, and
    its record entry and hand-over are as before."""
    path, state = saved
    model = CountsWatchedOps(path, where)
    model.init_weights()
    assert model.seen_in_load == 0
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert "in CountsWatchedOps.init_weights" in wi.get_init_record(model)["fc.weight"].info


def test_a_load_that_runs_user_code_stays_watched(saved, counted):
    """``map_location`` as a function is user code: a write it makes to the model is seen,
    recorded and undone with the run when the run fails."""
    path, _ = saved
    holder: list[nn.Module] = []

    def where(storage, location):
        holder[0].fc.bias.data.fill_(5.0)  # user code writing the model inside the load
        return storage

    model = CountsWatchedOps(path, where)
    holder.append(model)
    bias = model.fc.bias.detach().clone()
    model.init_weights()
    assert model.seen_in_load > 0
    assert torch.equal(model.fc.bias, torch.full((32,), 5.0))
    assert "CountsWatchedOps.init_weights" in wi.get_init_record(model)["fc.bias"].info

    class Fails(CountsWatchedOps):
        def init_weights(self) -> None:
            super().init_weights()
            raise RuntimeError("after the load")

    failing = Fails(path, where)
    holder[0] = failing
    bias = failing.fc.bias.detach().clone()
    with pytest.raises(RuntimeError, match="after the load"):
        failing.init_weights()
    assert torch.equal(failing.fc.bias, bias)  # the write inside the load was undone


def test_a_load_from_a_users_file_object_stays_watched(saved, counted):
    """A file-like object of the user's own class may run any code in its ``read``."""
    path, _ = saved

    class Stream:
        def __init__(self, data: bytes) -> None:
            self._inner = __import__("io").BytesIO(data)

        def read(self, *a):
            return self._inner.read(*a)

        def readinto(self, b):
            return self._inner.readinto(b)

        def seek(self, *a):
            return self._inner.seek(*a)

        def tell(self):
            return self._inner.tell()

        def readline(self, *a):
            return self._inner.readline(*a)

    with open(path, "rb") as f:
        data = f.read()
    model = CountsWatchedOps(path, source=Stream(data))
    model.init_weights()
    assert model.seen_in_load > 0


class Reads(wi.BaseModule):
    """Calls ``torch.load`` as it is given (the result is kept for the test to compare)."""

    def __init__(self, load) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.load = load

    def init_weights(self) -> None:
        self.got = self.load()


@pytest.fixture
def lane(monkeypatch):
    """The files user code's loads had read by the checkpoint fast lane (and its answers)."""
    seen: list[tuple[str, bool]] = []
    original = records.fast_load

    def spy(path, where, mmap):
        out = original(path, where, mmap)
        seen.append((path, out[0]))
        return out

    monkeypatch.setattr(records, "fast_load", spy)
    return seen


def _same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert (type(a), a.dtype, a.shape, a.stride(), a.device, a.requires_grad) == \
            (type(b), b.dtype, b.shape, b.stride(), b.device, b.requires_grad)
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("call, asked", [
    (lambda p: torch.load(p), False), (lambda p: torch.load(p, map_location="cpu"), False),
    (lambda p: torch.load(p, "cpu", weights_only=True), True),
    (lambda p: torch.load(p, mmap=True), False),
    (lambda p: torch.load(p, map_location={"cpu": "cpu"}, weights_only=True), True)])
def test_a_weights_only_load_in_user_code_reads_by_the_fast_lane_as_torch_would(
        tmp_path, lane, call, asked):
    """A load of a path that torch reads as ``weights_only`` (by default, since torch 2.6,
    or asked) gives what ``torch.load`` gives: the same types, keys, metadata, values."""
    from collections import OrderedDict

    from weightinit.compat import loads_weights_only_by_default
    state = OrderedDict([("w", torch.randn(3, 5)), ("b", torch.arange(4, dtype=torch.int64)),
                         ("p", nn.Parameter(torch.ones(2))), ("v", torch.zeros(6)[1:4])])
    state._metadata = OrderedDict([("", {"version": 2})])
    path = str(tmp_path / "user.pth")
    torch.save({"state_dict": state, "meta": {"epoch": 3, "dtype": torch.float16}}, path)
    model = Reads(lambda: call(path))
    model.init_weights()
    expected = call(path)
    _same(model.got, expected)
    assert model.got["state_dict"]._metadata == expected["state_dict"]._metadata
    assert lane == ([(path, True)] if asked or loads_weights_only_by_default() else [])


def test_user_loads_the_fast_lane_does_not_take_are_torch_loads(tmp_path, lane):
    """Explicit ``weights_only=False`` (torch's C unpickler already), bytes, a custom
    ``pickle_module`` and extra arguments go to ``torch.load`` untouched."""
    import io
    import pickle
    path = str(tmp_path / "plain.pth")
    torch.save({"w": torch.ones(2)}, path)
    with open(path, "rb") as f:
        raw = f.read()
    for call in (lambda: torch.load(path, weights_only=False),
                 lambda: torch.load(io.BytesIO(raw), weights_only=True),
                 lambda: torch.load(path, pickle_module=pickle, weights_only=False),
                 lambda: torch.load(path, weights_only=True, encoding="utf-8")):
        model = Reads(call)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (torch: encoding= only works without weights_only)
            model.init_weights()
        assert torch.equal(model.got["w"], torch.ones(2))
    assert lane == []


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("echo fast-lane-ran-it > boom.txt",))


def test_an_unsafe_file_user_code_loads_gets_torchs_refusal(tmp_path, lane, monkeypatch):
    """A pickle naming ``os.system`` (or a whole module) read with ``weights_only=True``:
    the fast lane refuses it unrun, and torch's own ``weights_only`` error reaches the user
    code, the model untouched."""
    import pickle
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "evil.pth")
    torch.save({"x": _Boom()}, path)
    model = Reads(lambda: torch.load(path, weights_only=True))
    before = model.fc.weight.detach().clone()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        model.init_weights()
    assert not (tmp_path / "boom.txt").exists()
    assert lane == [(path, False)]
    assert torch.equal(model.fc.weight, before)


def test_a_load_with_too_many_positional_arguments_fails_as_torch_fails(tmp_path, lane):
    """``weights_only`` is keyword-only in ``torch.load``: passed as a fourth positional
    argument, torch refuses the call, and so does the watched load (the lane never reads)."""
    path = str(tmp_path / "p.pth")
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(TypeError) as direct:
        torch.load(path, None, None, True)
    model = Reads(lambda: torch.load(path, None, None, True))
    with pytest.raises(TypeError) as watched:
        model.init_weights()
    assert str(watched.value) == str(direct.value)
    assert lane == []
