"""MMCV's ``trunc_normal_`` (``trunc_normal_init``) in user code through ``weightinit.mmcv``:
its five ops are taken in one step (a stand-in for ``_no_grad_trunc_normal_``) with
exactly what watching them one by one gives — the values (the same key drawn from
torch's generator, the same chain), the generator's state after, the record entries, the
version counts, MMCV's warning and errors — and MMCV's own function is back after the call.
Far out in the tails (``std=0.02`` between -2 and 2) the one step is one draw of the
truncated normal under that same key, in tiles, in place of the five ops: those values are
checked against that draw, everything else against the ops watched one by one.

Each case runs twice, the stand-in on and off (off: MMCV's function, watched op by op),
and once with MMCV alone (versions, warnings, errors; its values are its own draws)."""

from __future__ import annotations

import warnings

import mmcv1_support as support
import pytest
import torch
import torch.nn as nn

pytest.importorskip("mmcv")

support.prepare()
support.quiet_logs()
import mmcv.cnn.utils.weight_init as mmcv_weight_init  # noqa: E402
from mmcv.cnn import trunc_normal_init  # noqa: E402
from mmcv.cnn.utils.weight_init import trunc_normal_  # noqa: E402
from mmcv.runner import BaseModule  # noqa: E402

import weightinit as wi  # noqa: E402
import weightinit.mmcv as wimc  # noqa: E402
from weightinit.execution import userchains  # noqa: E402
from weightinit.execution.parallel import draw_all  # noqa: E402
from weightinit.execution.tiles import RegionFill  # noqa: E402
from weightinit.maths import Elementwise  # noqa: E402

MMCVS = mmcv_weight_init._no_grad_trunc_normal_


@pytest.fixture(autouse=True)
def _uninstalled():
    yield
    wimc.uninstall()


class Head(BaseModule):
    """User code that draws with MMCV's helpers (large tensors are kept pending, small
    ones drawn at once), as MMSegmentation's and MMDetection's heads do."""

    def __init__(self, how: str = "init") -> None:
        super().__init__(init_cfg=dict(type="Constant", val=0.5, layer="Linear"))
        self.proj = nn.Linear(192, 150)  # 28 800 elements: pending
        self.cls = nn.Linear(150, 150)
        self.small = nn.Linear(8, 4)  # 32 elements: drawn at once
        self.how = how
        self.versions: dict[str, int] = {}

    def init_weights(self) -> None:
        super().init_weights()
        before = {n: p._version for n, p in self.named_parameters()}
        if self.how == "init":
            for m in (self.proj, self.cls, self.small):
                trunc_normal_init(m, std=0.02)
        elif self.how == "direct":
            trunc_normal_(self.proj.weight, mean=0.1, std=0.3, a=-0.4, b=0.9)
            trunc_normal_(self.cls.weight, 0, 1, -3, 3)  # (ints, as some code passes them)
        elif self.how == "then_read":
            trunc_normal_init(self.proj, std=0.02)
            with torch.no_grad():
                self.proj.weight.mul_(2.0)  # (reads the pending draw: drawn first)
        elif self.how == "view_held":
            view = self.proj.weight.view(-1)  # (read through after: drawn first)
            trunc_normal_init(self.proj, std=0.02)
            self.seen = view.sum().item()
        elif self.how == "warns":
            trunc_normal_(self.proj.weight, mean=5.0, std=0.1, a=-1.0, b=1.0)
        elif self.how == "zero_std":
            trunc_normal_(self.proj.weight, std=0)
        self.versions = {n: p._version - before[n] for n, p in self.named_parameters()}


def _run(how: str, bridged: bool, stand_in: bool, monkeypatch) -> tuple:
    torch.manual_seed(0)
    model = Head(how)
    if bridged:
        wimc.install()
        if not stand_in:
            monkeypatch.setattr(wimc._TRUNC_NORMAL, "make", lambda original: original)
    taken = []
    real = userchains.take_draw_chain

    def counted(*args, **kwargs):
        done = real(*args, **kwargs)
        taken.append(done)
        return done

    monkeypatch.setattr(userchains, "take_draw_chain", counted)
    torch.manual_seed(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        error = None
        try:
            model.init_weights()
        except Exception as err:  # noqa: BLE001 - compared below
            error = err
    state = torch.get_rng_state()
    if bridged:
        wimc.uninstall()
    monkeypatch.undo()
    record = wi.get_init_record(model) if bridged and error is None else None
    texts = {n: r.info for n, r in record.params.items()} if record else None
    return (model, taken, [str(w.message) for w in caught if "trunc_normal" in str(w.message)],
            error, state, texts)


def _same_values(a: nn.Module, b: nn.Module, skip: tuple[str, ...] = ()) -> None:
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if n not in skip:
            assert torch.equal(p, q), n


#: per case, the weights drawn as one truncated normal N(0, 0.02²) on [-2, 2], in the order
#: their keys are drawn from torch's generator (seeded 1), and what user code then did to them
DIRECT = {"init": {"proj.weight": 1.0, "cls.weight": 1.0}, "then_read": {"proj.weight": 2.0},
          "view_held": {"proj.weight": 1.0}}


def _direct_draws(model: nn.Module, how: str) -> dict[str, torch.Tensor]:
    """What the stand-in's one draw gives: each weight's key is the next draw of torch's
    generator (as the five ops' uniform_ would take it), its tiles drawn under it."""
    torch.manual_seed(1)
    out = {}
    for name, factor in DIRECT.get(how, {}).items():
        key = int(torch.randint(0, 1 << 62, (), dtype=torch.int64))
        t = torch.empty_like(model.get_parameter(name))
        draw_all([RegionFill(Elementwise("trunc_normal", (0.0, 0.02, -2.0, 2.0)), t, key)])
        out[name] = t * factor
    return out


@pytest.mark.parametrize("how", ["init", "direct", "then_read", "view_held", "warns"])
def test_one_step_is_the_ops_watched_one_by_one_and_mmcvs_values(how, monkeypatch):
    on = _run(how, True, True, monkeypatch)
    off = _run(how, True, False, monkeypatch)
    mmcv = _run(how, False, False, monkeypatch)
    model, taken, warned, error, state, texts = on
    assert error is None and off[3] is None and mmcv[3] is None
    _same_values(model, off[0], skip=tuple(DIRECT.get(how, ())))
    for name, want in _direct_draws(model, how).items():
        got = model.get_parameter(name).detach()
        assert torch.equal(got, want), name
        assert not torch.equal(got, off[0].get_parameter(name)), name  # (not the five ops')
        assert got.std().item() == pytest.approx(0.02 * DIRECT[how][name], rel=0.03)
        assert abs(got.mean().item()) < 5 * 0.02 * DIRECT[how][name] / got.numel() ** 0.5
    assert torch.equal(state, off[4])  # the generator moved as watched op by op
    assert texts == off[5]
    assert model.versions == off[0].versions == mmcv[0].versions
    assert warned == off[2] == mmcv[2]
    assert off[1] == []  # (off: MMCV's function, never the stand-in)
    expected = {"init": [True, True, False], "direct": [True, True], "then_read": [True],
                "view_held": [True], "warns": []}[how]
    assert taken == expected
    if how == "init":
        assert texts["proj.weight"] == "trunc_normal_init(std=0.02) in Head.init_weights"
    if how == "view_held":
        assert model.seen == pytest.approx(float(model.proj.weight.detach().sum()))  # (drawn, read)
    if how == "warns":
        assert warned and "mean is more than 2 std" in warned[0]


@pytest.mark.parametrize("mean, std, a, b, numel, direct", [
    (0.0, 0.02, -2.0, 2.0, 1 << 24, True),  # a hundred std out: drawn by rejection
    (0.0, 1.0, -2.0, 2.0, 4096, False),  # ±2 std: 4.6 % outside, the five ops
    (0.0, 1.0, -5.0, 5.0, 4096, True),  # 5.7e-7 outside per value: 0.0023 expected
    (0.0, 1.0, -5.0, 5.0, 28800, False),  # 0.016 expected: over the bound of 0.01
    (3.0, 1.0, -5.0, 2.0, 4096, False),  # the mean outside [a, b]
    (0.0, -0.02, -2.0, 2.0, 4096, False),  # a negative std: the ops (a mirrored draw)
    (0.0, 0.02, 2.0, -2.0, 4096, False),  # empty bounds
])
def test_the_one_draw_only_where_few_values_fall_outside(mean, std, a, b, numel, direct):
    got = userchains._direct(torch.empty(1).expand(numel), mean, std, a, b)
    assert got == (Elementwise("trunc_normal", (mean, std, a, b)) if direct else None)
    assert userchains._direct(numel, mean, std, a, b) is None  # (not a tensor: MMCV's own)


def test_errors_are_mmcvs_and_the_model_is_untouched(monkeypatch):
    torch.manual_seed(0)
    on = _run("zero_std", True, True, monkeypatch)
    mmcv = _run("zero_std", False, False, monkeypatch)
    assert type(on[3]) is type(mmcv[3]) is ZeroDivisionError
    fresh = (torch.manual_seed(0), Head("zero_std"))[1]
    _same_values(on[0], fresh)  # (rolled back: the construction values)


def test_mmcvs_function_is_back_after_the_call(monkeypatch):
    wimc.install()
    model = Head("init")
    model.init_weights()
    assert mmcv_weight_init._no_grad_trunc_normal_ is MMCVS
    wimc.uninstall()
    assert mmcv_weight_init._no_grad_trunc_normal_ is MMCVS


def test_outside_a_run_the_stand_in_is_mmcvs(monkeypatch):
    """A stand-in called with no run watching (another thread, or kept by reference) is
    MMCV's own function, with its values."""
    stand_in = userchains.trunc_normal_stand_in(MMCVS)
    a, b = torch.empty(64, 64), torch.empty(64, 64)
    torch.manual_seed(3)
    stand_in(a, 0.0, 0.02, -2.0, 2.0)
    torch.manual_seed(3)
    MMCVS(b, 0.0, 0.02, -2.0, 2.0)
    assert torch.equal(a, b)
