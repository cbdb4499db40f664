"""torch's one-op ``nn.init`` helpers in user code: while a run watches user code they are
stand-ins that keep the op pending in one step, with exactly what watching the op gives —
values (the same key drawn from torch's generator), the generator's state after, record
entries, version counts, the tensors drawn at once — and torch's own helpers are back after
the run. Each case runs with the stand-ins on and off (off: torch's helpers, watched op by
op)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.execution import nninit

HELPERS = ("constant_", "zeros_", "ones_", "normal_", "uniform_")
TORCHS = {name: getattr(nn.init, name) for name in HELPERS}


def _helper_fills(model: nn.Module) -> None:  # (a helper of the user's own file)
    nn.init.normal_(model.mid.weight, 0.5, 2.0)


class Net(wi.BaseModule):
    """User code calling every helper, on large tensors (kept pending), small ones (drawn at
    once), a tensor another view holds, with a generator, and positional or keyword."""

    def __init__(self) -> None:
        super().__init__(dict(type="Constant", val=0.25, layer="Linear"))
        self.big = nn.Linear(128, 64)  # 8 192 elements: pending
        self.mid = nn.Linear(96, 64)
        self.small = nn.Linear(4, 4)  # 16: drawn at once
        self.norm = nn.LayerNorm(4096)
        self.shared = nn.Linear(64, 64)
        self.versions: dict[str, int] = {}

    def init_weights(self) -> None:
        super().init_weights()
        before = {n: p._version for n, p in self.named_parameters()}
        nn.init.normal_(self.big.weight, std=0.02)
        nn.init.constant_(self.big.bias, val=0.5)
        _helper_fills(self)
        nn.init.uniform_(self.mid.bias, -0.1, b=0.1)
        nn.init.uniform_(self.small.weight)
        nn.init.zeros_(self.small.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(tensor=self.norm.bias)
        view = self.shared.weight.view(-1)  # (read after the fill: drawn first)
        nn.init.normal_(self.shared.weight, 0.0, 0.1)
        nn.init.normal_(self.shared.bias, generator=torch.Generator().manual_seed(5))
        self.seen = float(view.detach().sum())
        self.versions = {n: p._version - before[n] for n, p in self.named_parameters()}


def _run(stand_ins: bool, monkeypatch) -> tuple:
    torch.manual_seed(0)
    model = Net()
    if not stand_ins:
        for patch in nninit.NN_INIT.values():
            monkeypatch.setattr(patch, "make", lambda original: original)
    taken: list[bool] = []
    real = nninit.take_draw_chain
    monkeypatch.setattr(nninit, "take_draw_chain",
                        lambda *a, **k: taken.append(real(*a, **k)) or taken[-1])
    torch.manual_seed(1)
    model.init_weights()
    state = torch.get_rng_state()
    monkeypatch.undo()
    texts = {n: r.info for n, r in wi.get_init_record(model).params.items()}
    return model, taken, state, texts


def test_one_step_is_the_op_watched(monkeypatch):
    on = _run(True, monkeypatch)
    off = _run(False, monkeypatch)
    for (n, p), (_, q) in zip(on[0].named_parameters(), off[0].named_parameters()):
        assert torch.equal(p, q), n
    assert torch.equal(on[2], off[2])  # the generator moved as watched op by op
    assert on[3] == off[3]
    assert on[0].versions == off[0].versions
    assert all(v == 1 for n, v in on[0].versions.items() if n != "shared.bias"), on[0].versions
    assert on[0].seen == off[0].seen == pytest.approx(float(on[0].shared.weight.detach().sum()))
    # kept pending: big.weight, big.bias, mid.weight, small.bias and the norm's two (a
    # constant of any size waits), the shared weight (drawn when read through the view); at
    # once: the small draws (mid.bias, small.weight: too small to wait); the draw with a
    # generator never reaches the stand-in's step
    assert on[1] == [True, True, True, False, False, True, True, True, True]
    assert off[1] == []
    texts = on[3]
    assert texts["big.weight"] == "normal_(std=0.02) in Net.init_weights"
    assert texts["big.bias"] == "constant_(val=0.5) in Net.init_weights"
    assert texts["mid.weight"] == "normal_(mean=0.5, std=2) in Net.init_weights"
    assert texts["norm.bias"] == "zeros_() in Net.init_weights"
    assert texts["small.weight"] == "uniform_() in Net.init_weights"
    w = on[0].big.weight.detach()
    assert abs(w.mean().item()) < 5 * 0.02 / w.numel() ** 0.5
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(on[0].big.bias == 0.5) and torch.all(on[0].norm.weight == 1.0)
    assert torch.all(on[0].norm.bias == 0.0) and torch.all(on[0].small.bias == 0.0)


def test_torchs_helpers_are_back_after_a_run():
    Net().init_weights()
    for name in HELPERS:
        assert getattr(nn.init, name) is TORCHS[name], name


def test_outside_a_run_a_stand_in_is_torchs_helper():
    """A stand-in kept by reference and called with no run watching is torch's helper."""
    for name, args in (("normal_", (0.1, 0.3)), ("uniform_", (-2.0, 3.0)),
                       ("constant_", (0.7,)), ("zeros_", ()), ("ones_", ())):
        a, b = torch.full((64, 80), 9.0), torch.full((64, 80), 9.0)
        torch.manual_seed(3)
        assert getattr(nninit, name)(a, *args) is a
        torch.manual_seed(3)
        TORCHS[name](b, *args)
        assert torch.equal(a, b), name
        assert a._version == b._version, name


def test_a_helper_given_bad_arguments_raises_torchs_error():
    class Bad(wi.BaseModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(128, 64)

        def init_weights(self) -> None:
            nn.init.normal_(self.fc.weight, 0.0, -1.0)

    m = Bad()
    before = m.fc.weight.detach().clone()
    with pytest.raises(RuntimeError, match="normal expects std >= 0.0"):
        m.init_weights()
    assert torch.equal(m.fc.weight, before) and not m.is_init
