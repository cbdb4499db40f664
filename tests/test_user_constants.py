"""User code's constant fills (``fill_(number)``, ``zero_()``, as ``nn.init.constant_``/
``zeros_``/``ones_`` and MMCV's ``constant_init`` make them) of a whole floating-point tensor
of the model, kept pending (``weightinit.execution.userfills``): written at the end in the
tensor's own memory, earlier if user code reads it. What user code, the record, the version
counter and an undo see is what writing at once gives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.execution import pending as pending_mod


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class Consts(wi.BaseModule):
    """``init_weights`` fills ``fc``'s tensors with constants, then does ``after``."""

    def __init__(self, after=None, fail: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.register_buffer("count", torch.tensor([7, 8], dtype=torch.int64))
        self.after, self.fail = after, fail
        self.seen: dict[str, object] = {}

    def init_weights(self) -> None:
        nn.init.constant_(self.fc.weight, 0.25)
        nn.init.zeros_(self.fc.bias)
        if self.after is not None:
            self.after(self)
        if self.fail:
            raise RuntimeError("user code failed after its fills")


@pytest.fixture
def deferred(monkeypatch):
    """Counts the user fills the watch kept pending (constants only)."""
    kept: list[tuple[str, float]] = []
    original = pending_mod.Pending.defer_fill

    def spy(self, func, args, dist, *text):
        done = original(self, func, args, dist, *text)
        if done and dist.kind == "constant":
            kept.append((func.overloadpacket.__name__, dist.args[0]))
        return done

    monkeypatch.setattr(pending_mod.Pending, "defer_fill", spy)
    return kept


def test_constant_fills_wait_and_land_in_place_with_one_version_step_and_their_entry(deferred):
    model = Consts()
    w, b = model.fc.weight, model.fc.bias
    ptrs, versions = (_ptr(w), _ptr(b)), (w._version, b._version)
    model.init_weights()
    assert deferred == [("fill_", 0.25), ("zero_", 0)]
    assert torch.equal(w.detach(), torch.full((5, 6), 0.25))
    assert torch.equal(b.detach(), torch.zeros(5))
    assert (_ptr(w), _ptr(b)) == ptrs  # their own memory: no fresh storage, nothing kept
    assert (w._version, b._version) == (versions[0] + 1, versions[1] + 1)  # the ops' steps
    record = wi.get_init_record(model)
    assert record.params["fc.weight"].info == "constant_(val=0.25) in Consts.init_weights"
    assert record.params["fc.bias"].info == "zeros_() in Consts.init_weights"


def test_user_code_reading_a_pending_constant_sees_it():
    def after(m):
        m.seen["sum"] = float(m.fc.weight.detach().sum())  # a read: the fill is done first
        m.seen["numpy"] = m.fc.bias.detach().numpy().copy()  # raw memory: done first too
        m.seen["alias"] = m.fc.weight.data[0, :2].tolist()

    model = Consts(after)
    model.init_weights()
    assert model.seen["sum"] == 30 * 0.25
    assert np.array_equal(model.seen["numpy"], np.zeros(5, dtype=np.float32))
    assert model.seen["alias"] == [0.25, 0.25]


def test_ops_after_a_pending_constant_act_on_its_value():
    def after(m):
        m.fc.weight.data.mul_(4.0).add_(1.0)  # chained on the constant
        with torch.no_grad():
            m.fc.bias[:2] = 3.0  # a partial write: lands on the zeros

    model = Consts(after)
    model.init_weights()
    assert torch.equal(model.fc.weight.detach(), torch.full((5, 6), 2.0))
    assert model.fc.bias.tolist() == [3.0, 3.0, 0.0, 0.0, 0.0]


def test_a_later_overwrite_wins_and_is_the_record_entry():
    def after(m):
        nn.init.ones_(m.fc.weight)

    model = Consts(after)
    model.init_weights()
    assert torch.equal(model.fc.weight.detach(), torch.ones(5, 6))
    assert wi.get_init_record(model).params["fc.weight"].info == "ones_() in Consts.init_weights"


@pytest.mark.parametrize("after", [None, lambda m: float(m.fc.weight.detach().sum())])
def test_a_failure_after_constant_fills_leaves_the_model_untouched(after):
    model = Consts(after, fail=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="user code failed after its fills"):
        model.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.is_init


def test_a_value_the_dtype_can_not_hold_fails_at_the_op_as_torch_does(deferred):
    def after(m):
        m.fc.weight.data.fill_(1e300)  # float32 overflows: torch's own error, at the op

    with pytest.raises(RuntimeError) as theirs:
        torch.zeros(2).fill_(1e300)
    model = Consts(after)
    before = model.fc.weight.detach().clone()
    with pytest.raises(RuntimeError) as ours:
        model.init_weights()
    assert str(ours.value) == str(theirs.value)
    assert torch.equal(model.fc.weight.detach(), before)
    assert deferred == [("fill_", 0.25), ("zero_", 0)]  # (not the refused one)


def test_non_float_tensors_and_aliases_are_torchs_own_op(deferred):
    def after(m):
        m.count.zero_()  # int64: torch's op, at once
        m.fc.weight.data.fill_(2.0)  # through an alias (not the model's tensor object)
        m.seen["count"] = m.count.tolist()

    model = Consts(after)
    model.init_weights()
    assert model.seen["count"] == [0, 0]
    assert model.count.tolist() == [0, 0]
    assert torch.equal(model.fc.weight.detach(), torch.full((5, 6), 2.0))
    assert deferred == [("fill_", 0.25), ("zero_", 0)]


def test_special_values_and_python_numbers_land_as_torch_writes_them():
    values = [float("inf"), float("-inf"), float("nan"), True, 3, -0.0, 2 ** 40]

    class Many(wi.BaseModule):
        def __init__(self) -> None:
            super().__init__()
            self.ps = nn.ParameterList(nn.Parameter(torch.zeros(3)) for _ in values)
            self.low = nn.Parameter(torch.zeros(3, dtype=torch.float16))

        def init_weights(self) -> None:
            for p, v in zip(self.ps, values):
                nn.init.constant_(p, v)
            nn.init.constant_(self.low, 65504.0)

    model = Many()
    model.init_weights()
    for p, v in zip(model.ps, values):
        expected = torch.zeros(3).fill_(v)
        assert torch.equal(p.detach(), expected) or (torch.isnan(expected).all()
                                                     and torch.isnan(p).all()), v
    assert torch.signbit(model.ps[5]).all()  # -0.0 stays negative zero
    assert torch.equal(model.low.detach(), torch.full((3,), 65504.0, dtype=torch.float16))


@pytest.mark.parametrize("order", [1, -1], ids=["0.0 first", "-0.0 first"])
def test_numbers_that_compare_equal_keep_their_own_bits_run_after_run(order):
    """A pending constant is made once per number and reused: 0.0 and -0.0 (equal, with
    the same hash), 0, False, 1, 1.0, True and nan each land as torch's fill_ writes them,
    in either order, in a later run too (the kept ones reused), each named by its own."""
    cases = [(0.0, "0"), (-0.0, "-0"), (0, "0"), (False, "False"), (1, "1"), (1.0, "1"),
             (True, "True"), (float("nan"), "nan")][::order]
    values = [v for v, _ in cases]

    class Numbers(wi.BaseModule):
        def __init__(self) -> None:
            super().__init__()
            self.ps = nn.ParameterList(nn.Parameter(torch.full((4,), 5.0)) for _ in values)

        def init_weights(self) -> None:
            for p, v in zip(self.ps, values):
                nn.init.constant_(p, v)

    for _ in range(2):
        model = Numbers()
        model.init_weights()
        for p, v in zip(model.ps, values):
            expected = torch.empty(4).fill_(v)
            assert torch.equal(torch.signbit(p.detach()), torch.signbit(expected)), v
            assert torch.equal(p.detach(), expected) or (math.isnan(v) and p.isnan().all()), v
        record = wi.get_init_record(model).params
        assert [record[f"ps.{i}"].info for i in range(len(cases))] == [
            f"constant_(val={text}) in Numbers.init_weights" for _, text in cases]


def test_a_fill_of_a_tensor_sharing_its_storage_is_torchs_own_op_and_seen_through_the_other(
        deferred):
    class Shared(wi.BaseModule):
        def __init__(self) -> None:
            super().__init__()
            base = torch.zeros(6)
            self.a = nn.Parameter(base[:4])  # two parameters over one storage, overlapping
            self.b = nn.Parameter(base[2:])
            self.seen: list[float] = []

        def init_weights(self) -> None:
            nn.init.constant_(self.a, 5.0)
            self.seen = self.b.detach().tolist()  # sees the overlap written at once

    model = Shared()
    assert model.a.untyped_storage().data_ptr() == model.b.untyped_storage().data_ptr()
    model.init_weights()
    assert deferred == []
    assert model.seen == [5.0, 5.0, 0.0, 0.0]
    assert model.a.tolist() == [5.0] * 4 and model.b.tolist() == [5.0, 5.0, 0.0, 0.0]


def test_a_seeded_run_writes_constants_as_an_unseeded_one(deferred):
    unseeded = Consts()
    unseeded.init_weights()
    kept = list(deferred)
    seeded = Consts()
    seeded.init_weights(seed=7)
    assert kept == [("fill_", 0.25), ("zero_", 0)] and deferred == kept  # (seeded: at once)
    for k, v in unseeded.state_dict().items():
        assert torch.equal(v, seeded.state_dict()[k]), k
    assert (wi.get_init_record(seeded).params["fc.weight"].info
            == wi.get_init_record(unseeded).params["fc.weight"].info)
