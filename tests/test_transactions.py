"""Atomic runs: a failure after planning leaves the model exactly as it was before the call.

Each test fails a run at a different point — user ``init_weights``, an
initializer's ``__call__``, allocation, a checkpoint read, the undefined
check — and checks that values, slots, ``is_init`` flags and the record are
as before, and that a retry gives exactly the values of a clean run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import weightinit as wi
from weightinit.execution import materialize as materialize_module


class Good(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def init_weights(self):
        nn.init.ones_(self.fc.weight)


class Bad(Good):
    def init_weights(self):
        nn.init.zeros_(self.fc.weight)  # a write, then the failure
        self.fc.bias = nn.Parameter(torch.full((4,), 9.0))  # a replaced slot
        raise RuntimeError("bug in user code")


class Net(wi.BaseModule):
    def __init__(self, last=Good):
        super().__init__(dict(type="Normal", layer="Linear", std=0.5))
        self.a = wi.Sequential(nn.Linear(4, 4),
                               init_cfg=dict(type="Constant", layer="Linear", val=3))
        self.b = Good()
        self.c = last()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def flags(model: nn.Module) -> list[bool]:
    return [m.is_init for m in model.modules() if isinstance(m, wi.BaseModule)]


def test_failing_user_init_weights_restores_an_eager_model():
    m = Net(last=Bad)
    before, params = state(m), dict(m.named_parameters())
    with pytest.raises(RuntimeError, match="bug in user code"):
        m.init_weights()
    assert_same(m, before)
    assert dict(m.named_parameters()) == params  # the replaced bias slot is back (same object)
    assert flags(m) == [False, False]  # no is_init committed, not even for finished children
    assert m.init_record is None
    m.c = Good()
    m.init_weights()  # a retry runs every step, as a first run would
    assert torch.all(m.a[0].weight == 3) and torch.all(m.b.fc.weight == 1)
    assert torch.all(m.c.fc.weight == 1) and flags(m) == [True, True]


def test_failing_deferred_run_returns_to_meta_and_a_retry_equals_a_clean_run():
    with wi.deferred():
        m = Net(last=Bad)
    with pytest.raises(RuntimeError, match="bug in user code"):
        m.init_weights(seed=11)
    assert all(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    assert flags(m) == [False, False] and m.init_record is None
    m.c.__class__ = Good  # the bug is fixed
    m.init_weights(seed=11)
    with wi.deferred():
        clean = Net()
    clean.init_weights(seed=11)
    assert_same(m, state(clean))
    # every tensor has a real, finite value and the defaults are recorded as such
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert m.init_record["c.fc.weight"].kind == "user"
    assert m.init_record["c.fc.bias"].info == "NormalInit: mean=0, std=0.5, bias=0"


def test_failing_initializer_call_restores_the_model():
    calls = []

    @wi.WEIGHT_INITIALIZERS.register_module(name="ExplodingForTest", force=True)
    class Exploding:
        def __call__(self, module):
            calls.append(module)
            nn.init.constant_(module[1].weight, 7.0)
            raise ValueError("initializer failed")

    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    before = state(net)
    with pytest.raises(ValueError, match="initializer failed"):
        wi.initialize(net, [dict(type="Constant", layer="Linear", val=2),
                            dict(type="ExplodingForTest")])
    assert calls and net[1].weight.dtype == torch.float32
    assert_same(net, before)
    assert wi.get_init_record(net) is None


def test_failing_allocation_leaves_the_model_on_meta(monkeypatch):
    real = materialize_module._allocate
    seen = []

    def flaky(t, *args):
        seen.append(t)
        if len(seen) == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(t, *args)

    with wi.deferred():
        m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    monkeypatch.setattr(materialize_module, "_allocate", flaky)
    with pytest.raises(wi.MaterializeError, match="simulated"):
        wi.initialize(m, dict(type="Constant", layer="LayerNorm", val=2), seed=5)
    assert all(p.is_meta for p in m.parameters())
    monkeypatch.setattr(materialize_module, "_allocate", real)
    wi.initialize(m, dict(type="Constant", layer="LayerNorm", val=2), seed=5)
    with wi.deferred():
        clean = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    wi.initialize(clean, dict(type="Constant", layer="LayerNorm", val=2), seed=5)
    assert_same(m, state(clean))
    assert torch.all(m[2].weight == 2) and torch.isfinite(m[0].weight).all()


def test_failing_checkpoint_read_restores_written_tensors(tmp_path, monkeypatch):
    src = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    before = state(net)
    reads = []
    real_get = wi.checkpoint.loader.CheckpointState.get

    def get(self, key):
        reads.append(key)
        if len(reads) == 3:
            raise wi.CheckpointError(f"{key}: truncated file (simulated)")
        return real_get(self, key)

    monkeypatch.setattr(wi.checkpoint.loader.CheckpointState, "get", get)
    with pytest.raises(wi.CheckpointError, match="simulated"):
        wi.load_checkpoint(net, str(path))
    assert len(reads) == 3
    assert_same(net, before)


def test_rules_only_runs_keep_no_copies(monkeypatch):
    kept = []
    txn = wi.execution.transaction.Transaction
    real_write, real_overwrite = txn.before_write, txn.before_overwrite

    def spy(self, tensor):
        real_write(self, tensor)
        kept.append(self.kept_bytes)

    def spy_overwrite(self, tensor, source=None):
        how = real_overwrite(self, tensor, source)
        kept.append(self.kept_bytes)
        return how

    monkeypatch.setattr(txn, "before_write", spy)
    monkeypatch.setattr(txn, "before_overwrite", spy_overwrite)
    net = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64))
    wi.initialize(net, [dict(type="Kaiming", layer="Linear"),
                        dict(type="Constant", layer="LayerNorm", val=1)])
    assert max(kept, default=0) == 0  # nothing can fail after validation: nothing is copied

    class User(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)

        def init_weights(self):
            nn.init.eye_(self.fc.weight)     # overwritten whole: its storage is set aside
            self.fc.bias.data.mul_(0.5)      # modified in place: its values are copied

    class Root(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.user = User()

    kept.clear()
    root = Root()
    weight = root.user.fc.weight
    root.init_weights()  # user code runs: only what it writes in place is copied (on write)
    assert max(kept) == 64 * 4
    assert root.user.fc.weight is weight and torch.equal(weight, torch.eye(64))


def test_second_init_weights_keeps_the_first_record_and_values():
    m = Net()
    m.init_weights()
    record, before = m.init_record, state(m)
    m.init_weights()
    assert m.init_record is record
    assert record["a.0.weight"].info == "ConstantInit: val=3, bias=0"
    assert_same(m, before)


def test_meta_device_is_refused_for_a_model_with_values():
    net = nn.Linear(3, 3)
    before = state(net)
    with pytest.raises(wi.InitValueError, match="device='meta' would throw away the values"):
        wi.initialize(net, dict(type="Constant", layer="Linear", val=1), device="meta")
    assert_same(net, before)
    with pytest.raises(wi.InitValueError, match="device='meta'"):
        wi.plan(net, [], device="meta")


def test_initialize_and_load_checkpoint_check_undefined_deferred_tensors(tmp_path):
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.empty(3))
            self.fc = nn.Linear(3, 3)

    with wi.deferred():
        m = Raw()
    with pytest.raises(wi.UndefinedParameterError, match="scale"):
        wi.initialize(m, dict(type="Constant", layer="Linear", val=1))
    path = tmp_path / "fc.safetensors"
    save_file({"fc.weight": torch.ones(3, 3), "fc.bias": torch.zeros(3)}, str(path))
    with pytest.raises(wi.UndefinedParameterError, match="scale"):
        wi.load_checkpoint(m, str(path))
    assert all(p.is_meta for p in m.parameters())
    with pytest.raises(wi.UndefinedParameterError, match="scale"):
        wi.plan(m, dict(type="Constant", layer="Linear", val=1))


def test_user_code_that_forgets_an_undefined_tensor_restores_the_deferred_model():
    class Forgets(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.empty(4))

        def init_weights(self):
            pass

    class Root(wi.BaseModule):
        def __init__(self):
            super().__init__(dict(type="Constant", layer="Linear", val=1))
            self.fc = nn.Linear(4, 4)
            self.f = Forgets()

    with wi.deferred():
        m = Root()
    with pytest.raises(wi.UndefinedParameterError, match="f.scale"):
        m.init_weights()
    assert all(p.is_meta for p in m.parameters()) and not m.is_init


def test_plan_raises_what_the_run_raises_before_writing():
    class Deep(wi.BaseModule):
        def __init__(self):
            super().__init__()
            # reached only by the tree validation: under a plain container
            self.inner = nn.Sequential(wi.Sequential(
                nn.Linear(2, 2), init_cfg=dict(type="Normal", layer="Linear", std=-1)))

    m = Deep()
    # MMEngine never reaches it, so by default both only warn; strict=True raises
    with pytest.raises(wi.InitValueError) as planned:
        wi.plan(m, strict=True)
    before = state(m)
    with pytest.raises(wi.InitValueError) as ran:
        m.init_weights(strict=True)
    assert type(planned.value) is type(ran.value) and str(planned.value) == str(ran.value)
    assert_same(m, before)
    with pytest.warns(wi.UnappliedConfigWarning) as warned:
        wi.plan(m)
    assert str(planned.value) in str(warned[-1].message)
