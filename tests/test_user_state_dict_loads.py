"""User code's ``load_state_dict`` inside a run: a module's tensors are taken at once (no
op passes through the watch), with exactly what the watch would have done op by op — the
values, the record entries, the version counters torch's own copies give, the storages
handed over — and everything else (a shape that does not match, a load pre-hook, a source
that is the model's own tensor, ``assign=True``, tied weights, extra state) is torch's own,
watched op by op, with torch's own results and errors.

The differential tests run each case twice, the module-at-once path on and off (off: every
copy watched op by op, the path before it), and compare values, records and errors.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.execution import statedicts
from weightinit.execution.pending import Pending


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.norm = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)  # (its own _load_from_state_dict calls torch's)
        self.register_buffer("scratch", torch.zeros(3), persistent=False)


class Loads(wi.BaseModule):
    """Rules first (init_cfg), then user code loads a state dict over part of the model."""

    def __init__(self, state: dict, how: str = "torch", fail: bool = False) -> None:
        super().__init__(dict(type="Constant", val=2.0, bias=0.5, layer="Linear"))
        self.body = Body()
        self.head = nn.Linear(8, 4)
        self.state, self.how, self.fail = state, how, fail

    def init_weights(self) -> None:
        super().init_weights()
        if self.how == "torch":
            self.body.load_state_dict(self.state)
        elif self.how == "function":  # a library's own recursion (MMCV's load_state_dict)
            _library_load(self.body, self.state)
        if self.fail:
            raise RuntimeError("user code failed after the load")


def _library_load(module: nn.Module, state: dict) -> None:
    missing: list[str] = []
    unexpected: list[str] = []
    errors: list[str] = []

    def load(m: nn.Module, prefix: str = "") -> None:
        m._load_from_state_dict(state, prefix, {}, True, missing, unexpected, errors)
        for name, child in m._modules.items():
            if child is not None:
                load(child, prefix + name + ".")

    load(module)
    if errors:
        raise RuntimeError("; ".join(errors))


def _state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    body = Body()
    with torch.no_grad():
        for t in body.parameters():
            t.normal_()
        body.bn.running_mean.normal_()
        body.bn.running_var.uniform_(0.5, 2.0)
        body.bn.num_batches_tracked.fill_(7)
    return {k: v.detach().clone() for k, v in body.state_dict().items()}


@pytest.fixture
def watched_copies(monkeypatch):
    """How many ``copy_`` ops reached the watch."""
    seen = [0]
    original = Pending.before_op

    def before_op(self, func, args, kwargs):
        if func is torch.ops.aten.copy_.default:
            seen[0] += 1
        return original(self, func, args, kwargs)

    monkeypatch.setattr(Pending, "before_op", before_op)
    return seen


def _op_by_op(monkeypatch) -> None:
    monkeypatch.setattr(statedicts, "_copies", lambda *args: None)


def _tensors(model: nn.Module, keep_vars: bool = False) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict(keep_vars=keep_vars).items()
            if isinstance(v, torch.Tensor)}


def _run(model: wi.BaseModule) -> tuple[dict, dict, dict]:
    before = {k: v._version for k, v in _tensors(model, True).items()}
    model.init_weights()
    record = wi.get_init_record(model)
    values = {k: v.detach().clone() for k, v in _tensors(model).items()}
    steps = {k: v._version - before.get(k, 0) for k, v in _tensors(model, True).items()}
    return values, {k: r.info for k, r in record.params.items()}, steps


@pytest.mark.parametrize("how", ["torch", "function"])
def test_a_modules_load_is_taken_at_once_with_the_watched_paths_result(how, watched_copies,
                                                                       monkeypatch):
    state = _state()
    values, record, steps = _run(Loads(state, how))
    assert watched_copies[0] == 0  # no copy passed through the watch
    for k, v in state.items():
        assert torch.equal(values[f"body.{k}"], v), k
    assert torch.all(values["head.weight"] == 2.0) and torch.all(values["head.bias"] == 0.5)
    # (a recursion in the user's own file: each module's call names its writes)
    text = ("load_state_dict(strict=True, assign=False)" if how == "torch"
            else "_load_from_state_dict(prefix='{}.', strict=True)")
    assert record["body.fc.weight"] == text.format("fc") + " in Loads.init_weights"
    assert record["body.norm.bias"] == text.format("norm") + " in Loads.init_weights"
    # each loaded tensor counted one write, as torch's own copy does (the rule's write of
    # body.fc never happened: the load cancelled it)
    assert {k: steps[f"body.{k}"] for k in state} == {k: 1 for k in state}

    _op_by_op(monkeypatch)
    watched_copies[0] = 0
    values2, record2, _ = _run(Loads(state, how))
    assert watched_copies[0] == len(state)  # (the path it replaces: each copy watched)
    assert values2.keys() == values.keys()
    assert all(torch.equal(values[k], values2[k]) for k in values)
    assert record2 == record


def test_loaded_storages_are_handed_over_and_the_rest_keeps_its_own(tmp_path):
    path = tmp_path / "body.pth"
    torch.save(_state(), path)

    class FromFile(Loads):
        def init_weights(self) -> None:
            loaded = torch.load(path, weights_only=True)
            self.ptrs = {k: _ptr(v) for k, v in loaded.items()}
            self.body.load_state_dict(loaded)

    model = FromFile({})
    model.init_weights()
    assert _ptr(model.body.fc.weight) == model.ptrs["fc.weight"]  # no copy, no new memory
    assert _ptr(model.body.bn.running_var) == model.ptrs["bn.running_var"]
    assert torch.equal(model.body.fc.weight, _state()["fc.weight"])


def test_a_failure_after_the_load_leaves_the_model_as_it_was():
    model = Loads(_state(), fail=True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ptrs = {k: _ptr(v) for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="failed after the load"):
        model.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and _ptr(v) == ptrs[k], k
    assert not model.is_init


class Custom(wi.BaseModule):
    """``init_weights`` runs ``load(self)``: each case of torch's own path."""

    def __init__(self, load) -> None:
        super().__init__(dict(type="Constant", val=3.0, bias=0.0, layer="Linear"))
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.load = load

    def init_weights(self) -> None:
        super().init_weights()
        self.load(self)


def _both(monkeypatch, load) -> tuple[tuple, tuple]:
    """The outcome — values, record texts, or the error — with and without the path."""
    outcomes = []
    for fast in (True, False):
        with monkeypatch.context() as patch:
            if not fast:
                _op_by_op(patch)
            model = Custom(load)
            try:
                outcomes.append(_run(model)[:2])
            except Exception as err:  # noqa: BLE001 - the error itself is compared
                outcomes.append((type(err), str(err), model.is_init))
    return outcomes[0], outcomes[1]


def _same(a: tuple, b: tuple) -> None:
    if isinstance(a[0], type):
        assert a == b
        return
    assert a[1] == b[1]
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_a_shape_that_does_not_match_is_torchs_error_and_the_model_is_untouched(monkeypatch):
    bad = {"weight": torch.ones(4, 5), "bias": torch.ones(4)}
    fast, slow = _both(monkeypatch, lambda m: m.a.load_state_dict(bad))
    assert fast[0] is RuntimeError and "size mismatch for weight" in fast[1]
    assert fast == slow
    model = Custom(lambda m: m.a.load_state_dict(bad))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        model.init_weights()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_another_dtype_is_converted_as_torch_converts(monkeypatch):
    state = {"weight": torch.arange(16, dtype=torch.float64).reshape(4, 4) / 3,
             "bias": torch.arange(4, dtype=torch.int64)}
    fast, slow = _both(monkeypatch, lambda m: m.a.load_state_dict(state))
    _same(fast, slow)
    assert torch.equal(fast[0]["a.weight"], state["weight"].float())
    assert torch.equal(fast[0]["a.bias"], torch.arange(4.0))


def test_a_source_that_is_the_models_own_tensor_gives_its_planned_value(monkeypatch):
    # b's load reads a: a's rule write is still pending when the load runs
    fast, slow = _both(monkeypatch, lambda m: m.b.load_state_dict(m.a.state_dict()))
    _same(fast, slow)
    assert torch.all(fast[0]["b.weight"] == 3.0) and torch.all(fast[0]["a.weight"] == 3.0)


def test_a_load_pre_hook_is_user_code_and_its_writes_are_seen(monkeypatch):
    def load(m: nn.Module) -> None:
        def hook(module, state_dict, prefix, *rest):
            m.b.weight.data.fill_(9.0)  # writes another module
        m.a._register_load_state_dict_pre_hook(hook, with_module=True)
        m.a.load_state_dict({"weight": torch.eye(4), "bias": torch.zeros(4)})

    fast, slow = _both(monkeypatch, load)
    _same(fast, slow)
    assert torch.all(fast[0]["b.weight"] == 9.0)
    assert fast[1]["b.weight"] == "load_state_dict(strict=True, assign=False) in Custom.init_weights"


def test_assign_tied_weights_and_extra_state_are_torchs_own(monkeypatch):
    state = {"weight": torch.full((4, 4), 5.0), "bias": torch.full((4,), 6.0)}

    def assign(m: nn.Module) -> None:
        m.a.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)

    def tied(m: nn.Module) -> None:
        m.b.weight = m.a.weight  # one Parameter in two modules
        m.a.load_state_dict(state)

    for load in (assign, tied):
        fast, slow = _both(monkeypatch, load)
        _same(fast, slow)
        assert torch.all(fast[0]["a.weight"] == 5.0) and torch.all(fast[0]["a.bias"] == 6.0)

    class Extra(nn.Linear):
        def get_extra_state(self):
            return {"seen": 0}

        def set_extra_state(self, extra):
            self.extra_seen = extra
            self.weight.data.mul_(2.0)  # (user code: watched)

    def extra(m: nn.Module) -> None:
        m.a = Extra(4, 4)
        m.a.load_state_dict({**state, "_extra_state": {"seen": 1}})

    fast, slow = _both(monkeypatch, extra)
    _same(fast, slow)
    assert torch.all(fast[0]["a.weight"] == 10.0)


def test_a_direct_call_is_named_as_torchs_own_call(monkeypatch):
    def direct(m: nn.Module) -> None:
        m.a._load_from_state_dict({"weight": torch.eye(4), "bias": torch.ones(4)}, "", {},
                                  True, [], [], [])

    fast, slow = _both(monkeypatch, direct)
    _same(fast, slow)
    assert fast[1]["a.weight"] == "_load_from_state_dict(prefix='', strict=True) in " \
                                  "Custom.init_weights"


def test_torchs_own_is_put_back_and_a_later_replacement_stays():
    torchs = nn.Module.__dict__["_load_from_state_dict"]
    Loads(_state()).init_weights()
    assert nn.Module.__dict__["_load_from_state_dict"] is torchs

    def theirs(self, *args):
        return torchs(self, *args)

    def replace(m: nn.Module) -> None:
        nn.Module._load_from_state_dict = theirs  # a library patching it meanwhile
        m.a.load_state_dict({"weight": torch.eye(4), "bias": torch.ones(4)})

    try:
        model = Custom(replace)
        model.init_weights()
        assert nn.Module.__dict__["_load_from_state_dict"] is theirs
        assert torch.equal(model.a.weight, torch.eye(4))
    finally:
        nn.Module._load_from_state_dict = torchs


def test_a_load_outside_a_run_or_in_another_thread_is_torchs_own(watched_copies):
    state = _state()
    body = Body()
    with statedicts.state_dict_loads(None):  # (no run's watch: the stand-in only forwards)
        body.load_state_dict(state)
    assert torch.equal(body.fc.weight, state["fc.weight"])

    class InThread(Loads):
        def init_weights(self) -> None:
            worker = threading.Thread(target=self.body.load_state_dict, args=(self.state,))
            worker.start()
            worker.join()

    model = InThread(state)
    model.init_weights()
    assert torch.equal(model.body.fc.weight, state["fc.weight"])
    assert watched_copies[0] == len(state)  # the thread's own watch saw each copy
    assert wi.get_init_record(model)["body.fc.weight"].kind == "user"
