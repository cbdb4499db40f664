"""SPEC B6 (first part): seeded, order-free values per parameter."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.execution import derive_seed

RULES = [dict(type="Normal", layer="Linear", std=0.5, bias=0.1),
         dict(type="Kaiming", layer="Conv2d", distribution="uniform"),
         dict(type="TruncNormal", param="*.scale", std=0.2),
         dict(type="Orthogonal", override=dict(name="b.proj"))]


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 32)
        self.conv = nn.Conv2d(4, 8, 3)
        self.proj = nn.Linear(32, 32)
        self.scale = nn.Parameter(torch.ones(32))


class NetA(wi.BaseModule):
    def __init__(self):
        super().__init__(RULES)
        self.a = Branch()
        self.b = Branch()


class NetB(wi.BaseModule):
    """Other children order, one more module, other class names."""

    def __init__(self):
        super().__init__(RULES)
        self.extra = nn.Linear(64, 64)
        self.b = Branch()
        self.a = Branch()


def test_values_depend_on_seed_name_and_rule_only():
    torch.manual_seed(0)
    x = NetA()
    torch.manual_seed(99)
    y = NetB()
    x.init_weights(seed=7)
    y.init_weights(seed=7)
    shared = dict(x.named_parameters())
    for name, p in y.named_parameters():
        if name in shared:
            assert torch.equal(p, shared[name]), name
    assert not torch.equal(x.a.fc.weight, x.b.fc.weight)  # different names, different draws
    z = NetA()
    z.init_weights(seed=8)
    assert not torch.equal(z.a.fc.weight, x.a.fc.weight)


def test_eager_and_deferred_give_the_same_values():
    eager = NetA()
    eager.init_weights(seed=3)
    with wi.deferred():
        lazy = NetA()
    lazy.init_weights(seed=3)
    for (n, p), (_, q) in zip(eager.named_parameters(), lazy.named_parameters()):
        assert torch.equal(p, q), n


def test_deferred_defaults_are_seeded_too():
    def build():
        with wi.deferred():
            return nn.Sequential(nn.Linear(8, 8), nn.Embedding(10, 4))

    m1, m2 = build(), build()
    torch.manual_seed(1)
    wi.initialize(m1, [], seed=5)
    torch.manual_seed(2)
    wi.initialize(m2, [], seed=5)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_seeded_block_global_rng_untouched_and_explicit_seed_wins():
    m1, m2, m3 = NetA(), NetA(), NetA()
    state = torch.get_rng_state()
    with wi.seeded(11):
        m1.init_weights()
        m2.init_weights(seed=12)
    m3.init_weights(seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(m1.a.conv.weight, m3.a.conv.weight)
    assert not torch.equal(m1.a.conv.weight, m2.a.conv.weight)
    with pytest.raises(wi.InitTypeError, match="seed must be an int or None"):
        NetA().init_weights(seed="1")


def test_derive_seed_is_stable():
    assert derive_seed(0, "fc.weight", "NormalInit: mean=0, std=1, bias=0|weight") == \
        derive_seed(0, "fc.weight", "NormalInit: mean=0, std=1, bias=0|weight")
    assert derive_seed(0, "fc.weight", "r") != derive_seed(1, "fc.weight", "r")
    assert 0 <= derive_seed(123, "x", "y") < 2**63


class UserGate(wi.BaseModule):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.empty(8, 8))

    def init_weights(self):
        nn.init.normal_(self.w)  # user code: draws from torch's global generator


class WithUserCode(wi.BaseModule):
    def __init__(self, extra: bool = False):
        super().__init__()
        if extra:
            self.extra = nn.Linear(4, 4)
        self.gate = UserGate()


def test_user_init_weights_is_seeded_by_path_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    a = WithUserCode()
    before = torch.get_rng_state()
    a.init_weights(seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(1)
    b = WithUserCode(extra=True)
    b.init_weights(seed=4)
    assert torch.equal(a.gate.w, b.gate.w)
    c = WithUserCode()
    c.init_weights(seed=5)
    assert not torch.equal(a.gate.w, c.gate.w)
    assert a.init_record["gate.w"].kind == "user"
