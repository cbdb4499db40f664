"""SPEC A3: init_cfg semantics and MMEngine's priority order.

Rules are constants with distinct values, so each value tells which rule won.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import weightinit as wi


def C(val, **kw):
    return dict(type="Constant", val=val, **kw)


def filled(t: torch.Tensor, v: float) -> bool:
    return bool(torch.all(t == v))


class Leaf(wi.BaseModule):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.conv = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 2)


class Parent(wi.BaseModule):
    def __init__(self, init_cfg=None, leaf_cfg=None):
        super().__init__(init_cfg)
        self.leaf = Leaf(leaf_cfg)
        self.fc = nn.Linear(2, 2)


# ------------------------------------------------------------------ layer


def test_layer_str_and_list():
    m = Leaf([C(1, layer="Conv2d", bias=2), C(3, layer=["Linear"], bias=4)])
    m.init_weights()
    assert filled(m.conv.weight, 1) and filled(m.conv.bias, 2)
    assert filled(m.fc.weight, 3) and filled(m.fc.bias, 4)


def test_layer_matches_the_whole_inheritance_chain():
    class MyLinear(nn.Linear):
        pass

    class MyMyLinear(MyLinear):
        pass

    net = nn.Sequential(MyMyLinear(2, 2), nn.Conv2d(2, 2, 1))
    wi.initialize(net, C(5, layer="Linear"))
    assert filled(net[0].weight, 5)
    assert not filled(net[1].weight, 5)


def test_rule_without_layer_or_override_warns_and_writes_nothing():
    m = Leaf(C(7))
    before = m.fc.weight.clone()
    with pytest.warns(wi.EmptyRuleWarning) as caught:
        m.init_weights()
    text = "\n".join(str(w.message) for w in caught)
    assert "has neither 'layer' nor 'override'" in text
    assert "<root> (Leaf) init_cfg" in text
    assert torch.equal(m.fc.weight, before)


def test_list_order_last_rule_wins():
    m = Leaf([C(1, layer="Linear"), C(2, layer="Linear")])
    m.init_weights()
    assert filled(m.fc.weight, 2)


def test_bias_prob():
    m = Leaf(C(0, layer="Linear", bias_prob=0.01))
    m.init_weights()
    assert torch.allclose(m.fc.bias, torch.full((2,), wi.bias_init_with_prob(0.01)))


# ------------------------------------------------------------------ override


def test_override_with_only_name_reuses_enclosing_rule_without_layer():
    m = Parent(C(1, bias=2, layer="Conv2d", override=dict(name="fc")), leaf_cfg=None)
    m.init_weights()
    assert filled(m.fc.weight, 1) and filled(m.fc.bias, 2)  # whole fc, though layer is Conv2d
    assert filled(m.leaf.conv.weight, 1)
    assert not filled(m.leaf.fc.weight, 1)


def test_override_with_own_rule_runs_right_after_its_layer_pass():
    cfg = [C(1, layer="Linear", override=dict(name="leaf", type="Constant", val=9)),
           C(3, layer="Conv2d")]
    m = Parent(cfg)
    m.init_weights()
    assert filled(m.leaf.fc.weight, 9)  # override after its own layer pass
    assert filled(m.leaf.conv.weight, 3)  # the next rule comes after the override
    assert filled(m.fc.weight, 1)


def test_override_list_and_dotted_path():
    cfg = C(1, layer="Linear", override=[dict(name="leaf.conv", type="Constant", val=4),
                                        dict(name="fc", type="Constant", val=5)])
    m = Parent(cfg)
    m.init_weights()
    assert filled(m.leaf.conv.weight, 4) and filled(m.fc.weight, 5) and filled(m.leaf.fc.weight, 1)


def test_override_glob_pattern():
    class Blocks(wi.BaseModule):
        def __init__(self):
            super().__init__(C(0, layer="Linear", override=dict(
                name="blocks.*.mlp.fc2", type="Constant", val=8)))
            self.blocks = nn.ModuleList(
                nn.ModuleDict({"mlp": nn.ModuleDict({"fc1": nn.Linear(2, 2),
                                                      "fc2": nn.Linear(2, 2)})})
                for _ in range(3))

    m = Blocks()
    m.init_weights()
    for b in m.blocks:
        assert filled(b["mlp"]["fc2"].weight, 8) and filled(b["mlp"]["fc1"].weight, 0)


@pytest.mark.parametrize("override,err_type,match", [
    (dict(type="Constant", val=1), wi.OverrideError, 'must contain the key "name"'),
    (dict(name="fc", val=1), wi.OverrideError, 'need "type" key'),
    ("fc", wi.InitTypeError, "override: must be a dict or a list of dict"),
    (dict(name="neck"), wi.OverrideTargetError,
     "no submodule 'neck' in Parent; children are: leaf, fc"),
    (dict(name="leaf.nope"), wi.OverrideTargetError,
     "no submodule 'nope' in Parent.leaf; children are: conv, fc"),
    (dict(name="*.nope"), wi.OverrideTargetError, "pattern '\\*.nope' matches no submodule"),
    (dict(name="fc.weight"), wi.OverrideTargetError, "is a tensor, not a submodule"),
])
def test_override_errors(override, err_type, match):
    m = Parent(C(1, layer="Linear", override=override))
    with pytest.raises(err_type, match=match) as err:
        m.init_weights()
    assert "<root> (Parent) init_cfg.override" in str(err.value)


def test_override_error_builtin_classes_match_mmengine():
    assert issubclass(wi.OverrideError, ValueError)
    assert issubclass(wi.OverrideTargetError, RuntimeError)


# ------------------------------------------------------------------ hierarchy


def test_deeper_init_cfg_wins_over_shallower():
    m = Parent(C(1, layer="Linear"), leaf_cfg=C(2, layer="Linear"))
    m.init_weights()
    assert filled(m.leaf.fc.weight, 2) and filled(m.fc.weight, 1)
    assert m.is_init and m.leaf.is_init


def test_user_defined_init_weights_wins_over_ancestor_rules():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2)

        def init_weights(self):
            nn.init.constant_(self.a.weight, 42)  # b is left to the ancestor

    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__(C(1, layer="Linear"))
            self.custom = Custom()

    m = Top()
    m.init_weights()
    assert filled(m.custom.a.weight, 42) and filled(m.custom.b.weight, 1)
    rec = m.init_record
    assert rec["custom.a.weight"].kind == "user"
    assert rec["custom.a.weight"].info == "constant_(val=42) in Custom.init_weights"
    assert rec["custom.b.weight"].info == "ConstantInit: val=1, bias=0"


def test_user_init_weights_sees_ancestor_values_before_scaling_them():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def init_weights(self):
            with torch.no_grad():
                self.fc.weight.mul_(3)

    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__(C(2, layer="Linear"))
            self.s = Scaled()

    m = Top()
    m.init_weights()
    assert filled(m.s.fc.weight, 6)


def test_write_through_data_is_detected_as_user_write():
    class ViaData(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def init_weights(self):
            self.fc.weight.data.fill_(5.0)  # invisible to the version counter

    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__(C(1, layer="Linear"))
            self.v = ViaData()

    m = Top()
    m.init_weights()
    assert filled(m.v.fc.weight, 5)
    assert m.init_record["v.fc.weight"].kind == "user"
    assert m.init_record["v.fc.bias"].info == "ConstantInit: val=1, bias=0"


def test_same_mean_write_is_still_detected():
    # MMEngine compares means: a permutation keeps the mean and is missed.
    class Flip(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2, bias=False)

        def init_weights(self):
            self.fc.weight.data.copy_(self.fc.weight.data.flip(0))

    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.f = Flip()
            with torch.no_grad():
                self.f.fc.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))

    m = Top()
    m.init_weights()
    assert m.init_record["f.fc.weight"].kind == "user"


def test_base_module_overriding_init_weights_with_super():
    class Head(wi.BaseModule):
        def __init__(self):
            super().__init__(C(3, layer="Linear"))
            self.cls = nn.Linear(2, 2)
            self.reg = nn.Linear(2, 2)

        def init_weights(self):
            super().init_weights()
            nn.init.constant_(self.reg.bias, 7)

    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__(C(1, layer="Linear"))
            self.head = Head()

    m = Top()
    m.init_weights()
    assert filled(m.head.cls.weight, 3) and filled(m.head.reg.weight, 3)
    assert filled(m.head.reg.bias, 7)
    rec = m.init_record
    assert rec["head.cls.weight"].info == "ConstantInit: val=3, bias=0"
    assert rec["head.reg.bias"].info == "constant_(val=7) in Head.init_weights"
    assert m.head.is_init


def test_is_init_children_are_skipped_and_second_call_warns():
    m = Parent(C(1, layer="Linear"), leaf_cfg=C(2, layer="Linear"))
    m.leaf.is_init = True
    before = m.leaf.fc.weight.clone()
    m.init_weights()
    # The leaf's own rule is skipped, but the parent's rule still covers its subtree.
    assert filled(m.leaf.fc.weight, 1) and not torch.equal(before, m.leaf.fc.weight)
    m.fc.weight.data.fill_(0)
    with pytest.warns(wi.RepeatedInitWarning,
                      match=r"init_weights of Parent has been called more than once\."):
        m.init_weights()
    assert filled(m.fc.weight, 0)


def test_children_of_plain_containers_are_not_reached_and_it_warns():
    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(Leaf(C(4, layer="Linear")))

    m = Top()
    before = m.seq[0].fc.weight.clone()
    with pytest.warns(wi.UnappliedConfigWarning) as caught:
        m.init_weights()
    assert torch.equal(m.seq[0].fc.weight, before)
    text = "\n".join(str(w.message) for w in caught)
    assert "seq.0 (Leaf): its init_cfg is never applied" in text
    assert "weightinit.Sequential" in text


@pytest.mark.parametrize("container", ["Sequential", "ModuleList", "ModuleDict"])
def test_containers_carry_init_cfg_and_reach_children(container):
    leaf = Leaf(C(6, layer="Conv2d"))
    if container == "Sequential":
        box = wi.Sequential(leaf, nn.Linear(2, 2), init_cfg=C(5, layer="Linear"))
    elif container == "ModuleList":
        box = wi.ModuleList([leaf, nn.Linear(2, 2)], init_cfg=C(5, layer="Linear"))
    else:
        box = wi.ModuleDict({"0": leaf, "1": nn.Linear(2, 2)}, init_cfg=C(5, layer="Linear"))
    box.init_weights()
    assert filled(leaf.conv.weight, 6) and filled(leaf.fc.weight, 5)
    assert "init_cfg={'type': 'Constant', 'val': 5, 'layer': 'Linear'}" in repr(box)


def test_model_wrapper_is_looked_through():
    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.wrapped = nn.DataParallel(Leaf(C(3, layer="Linear")))

    m = Top()
    m.init_weights()
    assert filled(m.wrapped.module.fc.weight, 3)


def test_init_cfg_is_deep_copied():
    cfg = C(1, layer="Linear")
    m = Leaf(cfg)
    cfg["val"] = 99
    m.init_weights()
    assert filled(m.fc.weight, 1)


# ------------------------------------------------------------------ initialize()


def test_initialize_any_module_in_order():
    net = nn.Sequential(nn.Conv1d(3, 1, 3), nn.Linear(1, 2))
    rec = wi.initialize(net, [C(1, layer="Conv1d"), C(2, layer="Linear")])
    assert filled(net[0].weight, 1) and filled(net[1].weight, 2)
    assert rec["0.weight"].info == "ConstantInit: val=1, bias=0"
    assert wi.get_init_record(net) is rec


def test_initialize_does_not_reorder_pretrained(tmp_path):
    src = nn.Linear(2, 2)
    nn.init.constant_(src.weight, 8)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    net = nn.Linear(2, 2)
    wi.initialize(net, [dict(type="Pretrained", checkpoint=str(path)), C(1, layer="Linear")])
    assert filled(net.weight, 1)  # plain initialize(): list order, last wins


def test_initializer_instance_callable_on_module():
    net = nn.Sequential(nn.Linear(2, 2), nn.Conv2d(2, 2, 1))
    wi.ConstantInit(val=2, layer="Linear")(net)
    assert filled(net[0].weight, 2) and not filled(net[1].weight, 2)


def test_initialize_rejects_non_config():
    with pytest.raises(wi.InitTypeError, match="init_cfg must be a dict or a list of dict"):
        wi.initialize(nn.Linear(2, 2), "Constant")


def test_init_cfg_entry_errors_name_module_and_entry():
    m = Parent(leaf_cfg=[C(1, layer="Linear"), "oops"])
    with pytest.raises(wi.ConfigStructureError, match=r"leaf \(Leaf\) init_cfg\[1\]: must be a "
                                                      "dict"):
        m.init_weights()
    m = Parent(leaf_cfg=dict(layer="Linear"))
    with pytest.raises(wi.InitKeyError, match=r"leaf \(Leaf\) init_cfg: no 'type' key"):
        m.init_weights()
    m = Parent(leaf_cfg=C(1, layer="Linear", vall=2))
    with pytest.raises(wi.InitTypeError, match="unexpected argument 'vall'. Did you mean 'val'"):
        m.init_weights()


def test_fan_rule_on_1d_weight_is_a_clear_error():
    m = Parent(dict(type="Kaiming", layer="Linear", override=dict(name="leaf")))
    m.leaf.norm = nn.LayerNorm(2)
    with pytest.raises(wi.ShapeError, match=r"cannot initialize leaf.norm \(LayerNorm\).weight"):
        m.init_weights()


# ------------------------------------------------------------------ update_init_info


def test_update_init_info_labels_changed_params():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.g = nn.Linear(2, 2)
            self.h = nn.Linear(2, 2)

        def init_weights(self):
            nn.init.zeros_(self.g.weight)
            wi.update_init_info(self, "zero gate")
            nn.init.ones_(self.h.weight)

    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.gate = Gate()

    m = Top()
    m.init_weights()
    assert m.init_record["gate.g.weight"].info == "zero gate"
    assert m.init_record["gate.h.weight"].info == "ones_() in Gate.init_weights"
    assert m.init_record["gate.g.bias"].kind == "unchanged"


def test_update_init_info_outside_init_weights_is_an_error():
    with pytest.raises(wi.InitRecordError, match="only works while init_weights runs"):
        wi.update_init_info(nn.Linear(2, 2), "x")


def test_override_name_may_be_a_property_holding_a_module():
    """As MMEngine (getattr): MMDetection's Bottleneck names its norms through properties."""

    class Block(wi.BaseModule):
        def __init__(self):
            super().__init__(dict(type="Constant", val=2.0, layer="Conv2d",
                                  override=dict(name="norm3", type="Constant", val=0.0)))
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn3 = nn.BatchNorm2d(2)

        @property
        def norm3(self):
            return self.bn3

    m = Block()
    m.init_weights()
    assert torch.all(m.bn3.weight == 0.0) and torch.all(m.conv.weight == 2.0)
    assert m.init_record["bn3.weight"].info == "ConstantInit: val=0.0, bias=0"
