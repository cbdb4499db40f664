"""SPEC B2: plan first (dry run, meta device), then write each tensor once."""

from __future__ import annotations

import abc
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import weightinit as wi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import models  # noqa: E402


def C(val, **kw):
    return dict(type="Constant", val=val, **kw)


class Inner(wi.BaseModule):
    def __init__(self):
        super().__init__(C(2, layer="Linear"))
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class Outer(wi.BaseModule):
    def __init__(self):
        super().__init__([C(1, layer="Linear"), C(5, layer="LayerNorm"),
                          dict(type="Normal", std=0.5, override=dict(name="head"))])
        self.inner = Inner()
        self.head = nn.Linear(4, 2)
        self.free = nn.Conv1d(2, 2, 1)


def test_plan_names_the_final_owner_and_writes_nothing():
    m = Outer()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    p = wi.plan(m)
    assert p["inner.fc.weight"].owner_info == "ConstantInit: val=2, bias=0"
    assert p["inner.fc.weight"].declared_in == "inner (Inner) init_cfg"
    assert len(p["inner.fc.weight"].writers) == 2  # the outer rule, then the inner one
    assert p["inner.norm.weight"].owner_info == "ConstantInit: val=5, bias=0"
    assert p["head.weight"].owner_info == "NormalInit: mean=0, std=0.5, bias=0"
    assert p["head.weight"].declared_in == "<root> (Outer) init_cfg[2].override"
    assert p["free.weight"].owner is None
    assert p.owners()["free.bias"].startswith("not changed")
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    assert not m.is_init


def test_plan_on_meta_device():
    with torch.device("meta"):
        m = models.transformer(depth=4, dim=64)
    assert m.blocks[0].qkv.weight.is_meta
    p = wi.plan(m)
    assert p["blocks.3.mlp_fc2.weight"].owner_info.startswith("NormalInit: mean=0, std=0.0070")
    assert p["blocks.0.qkv.weight"].owner_info.startswith("TruncNormalInit")
    assert p["norm.weight"].owner_info == "ConstantInit: val=1, bias=0"
    assert p.planned_writes == len(p)  # every parameter written exactly once


def test_plan_raises_the_same_errors_as_the_run():
    m = Outer()
    m.inner.init_cfg = C(1, layer="Linear", override=dict(name="missing"))
    with pytest.raises(wi.OverrideTargetError, match="children are: fc, norm"):
        wi.plan(m)


def test_plan_of_initialize_and_of_non_base_module():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    p = wi.plan(net, [C(1, layer="Linear"), C(2, override=dict(name="1"))])
    assert p["0.weight"].owner_info == "ConstantInit: val=1, bias=0"
    assert p["1.weight"].owner_info == "ConstantInit: val=2, bias=0"
    assert (p.planned_writes, p.naive_writes) == (4, 6)
    with pytest.raises(wi.InitTypeError, match="is not a weightinit.BaseModule"):
        wi.plan(net)


def test_plan_marks_user_code():
    class User(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def init_weights(self):
            pass

    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__(C(1, layer="Linear"))
            self.user = User()

    class Twice(wi.BaseModule):
        def __init__(self):
            super().__init__([C(1, layer="Linear"), C(2, layer="Linear")])
            self.user = User()
            self.other = nn.Linear(2, 2)

    p = wi.plan(Twice())
    # The user call must see the rules' values: its two tensors are flushed before it,
    # and the second rule replaces the first without a write.
    assert (p.planned_writes, p.naive_writes) == (4, 8)
    p = wi.plan(Top())
    assert p["user.fc.weight"].owner_info == (
        "user-defined init_weights in User (runs user code; before it: ConstantInit: val=1, "
        "bias=0)")


def _versions(model: nn.Module) -> dict[str, int]:
    return {k: v._version for k, v in model.state_dict(keep_vars=True).items()}


@pytest.mark.parametrize("build", [models.resnet50, models.vit_b16,
                                   lambda: models.transformer(depth=6, dim=64)])
def test_each_parameter_is_written_exactly_once(build):
    torch.manual_seed(0)
    m = build()
    before = _versions(m)
    p = wi.plan(m)
    m.init_weights()
    after = _versions(m)
    for name, entry in p.entries.items():
        expected = 1 if entry.owner is not None else 0
        assert after[name] - before[name] == expected, name
    assert p.naive_writes > p.planned_writes or build is models.vit_b16


def test_resnet_example_semantics():
    torch.manual_seed(0)
    m = models.resnet50()
    m.init_weights()
    rec = m.init_record
    bn3 = m.backbone.layer2[1].bn3
    assert torch.all(bn3.weight == 0) and torch.all(bn3.bias == 0)
    assert torch.all(m.backbone.layer2[1].bn1.weight == 1)
    assert rec["backbone.layer2.1.bn3.weight"].declared_in == (
        "backbone.layer2.1 (Bottleneck) init_cfg.override")
    w = m.backbone.layer3[0].conv2.weight  # 3x3, 256 -> 256, fan_out = 256·9
    assert abs(w.std().item() - (2 / (256 * 9)) ** 0.5) < 0.02 * (2 / (256 * 9)) ** 0.5 * 5
    assert abs(m.head.fc.weight.std().item() - 0.01) < 0.0002
    assert rec["head.fc.weight"].info == "NormalInit: mean=0, std=0.01, bias=0"


def test_a_class_registered_with_an_abc_later_becomes_a_node():
    """``is_node`` answers once per class, and again after any ABC registers a class (a
    virtual subclass of a node type is a node from then on)."""
    from weightinit.planning import nodes

    class Meta(nn.Module, metaclass=abc.ABCMeta):
        pass

    class Plain(nn.Module):
        pass

    nodes.register_node_type(Meta)
    try:
        module = Plain()
        assert not nodes.is_node(module)
        Meta.register(Plain)
        assert nodes.is_node(module)
    finally:
        nodes.unregister_node_type(Meta)
    assert not nodes.is_node(nn.Linear(1, 1)) and nodes.is_node(wi.BaseModule())
