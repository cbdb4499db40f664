"""A bad config anywhere raises before any write: the model stays bit-identical."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import weightinit as wi


def C(val, **kw):
    return dict(type="Constant", val=val, **kw)


class Block(wi.BaseModule):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.conv = nn.Conv2d(3, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 3)


class UserBlock(wi.BaseModule):
    """Overrides init_weights (calls super), so it runs as user code."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.fc = nn.Linear(3, 3)

    def init_weights(self):
        super().init_weights()
        nn.init.constant_(self.fc.bias, 11)


class Net(wi.BaseModule):
    def __init__(self, deep_cfg=None, user_cfg=None, top_cfg=None):
        super().__init__(top_cfg or [C(1, layer="Linear"), dict(type="Kaiming", layer="Conv2d")])
        self.early_user = UserBlock(C(2, layer="Linear"))  # user code runs before `blocks`
        self.blocks = wi.ModuleList([Block(C(3, layer="Conv2d")), Block(C(4, layer="Linear")),
                                     wi.Sequential(Block(deep_cfg))])
        self.late_user = UserBlock(user_cfg)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["__is_init__"] = torch.tensor([getattr(m, "is_init", False) for m in model.modules()])
    return state


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed"


BAD_DEEP = [
    (dict(type="Nope", layer="Linear"), wi.UnknownTypeError, "'Nope' is not in the weight"),
    (C(1, layer="Linear", override=dict(name="head")), wi.OverrideTargetError,
     r"blocks.2.0 \(Block\) init_cfg.override: module did not have attribute 'head'"),
    (dict(type="Kaiming", layer="BatchNorm2d"), wi.ShapeError,
     r"cannot initialize blocks.2.0.bn \(BatchNorm2d\).weight"),
    (dict(type="Xavier", layer="Linear", distribution="gauss"), wi.DistributionError,
     "distribution must be one of"),
    (C("one", layer="Linear"), wi.InitTypeError, "val must be a number"),
    (dict(type="Pretrained", checkpoint="missing.pth"), wi.CheckpointNotFoundError,
     "missing.pth can not be found"),
    ([C(1, layer="Linear"), 5], wi.ConfigStructureError, r"init_cfg\[1\]: must be a dict"),
]


@pytest.mark.parametrize("cfg,err_type,match", BAD_DEEP)
def test_bad_deep_config_leaves_model_untouched(cfg, err_type, match):
    torch.manual_seed(0)
    net = Net(deep_cfg=cfg)
    before = snapshot(net)
    with pytest.raises(err_type, match=match):
        net.init_weights()
    assert_untouched(net, before)
    assert not net.is_init


def test_bad_config_inside_user_code_subtree_fails_before_earlier_user_code_runs():
    net = Net(user_cfg=C(1, layer="Linear", override=dict(name="nothing")))
    before = snapshot(net)
    with pytest.raises(wi.OverrideTargetError, match=r"late_user \(UserBlock\) init_cfg.override"):
        net.init_weights()
    assert_untouched(net, before)


def test_bad_prefix_fails_before_writes(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": Block().state_dict()}, path)
    net = Net(deep_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone"))
    before = snapshot(net)
    with pytest.raises(wi.CheckpointKeyError, match="backbone. is not in the pretrained model") \
            as err:
        net.init_weights()
    assert isinstance(err.value, KeyError) and isinstance(err.value, AssertionError)
    assert "top-level keys are: bn, conv, fc" in str(err.value)
    assert_untouched(net, before)


def test_good_config_then_succeeds_and_marks_everything():
    net = Net()
    net.init_weights()
    assert torch.all(net.early_user.fc.weight == 2) and torch.all(net.early_user.fc.bias == 11)
    assert torch.all(net.blocks[1].fc.weight == 4)
    assert torch.all(net.blocks[0].conv.weight == 3)
    assert torch.all(net.late_user.fc.weight == 1) and torch.all(net.late_user.fc.bias == 11)
    assert all(m.is_init for m in net.modules() if isinstance(m, wi.BaseModule))


def test_initialize_bad_entry_after_good_ones_writes_nothing():
    net = nn.Sequential(nn.Linear(3, 3), nn.Conv2d(3, 3, 1), nn.LayerNorm(3))
    before = snapshot(net)
    cfg = [C(1, layer="Linear"), C(2, layer="Conv2d"),
           dict(type="Xavier", layer="LayerNorm")]
    with pytest.raises(wi.ShapeError, match=r"cannot initialize 2 \(LayerNorm\).weight"):
        wi.initialize(net, cfg)
    assert_untouched(net, before)


class PlainUser(nn.Module):
    """A plain module whose own init_weights reaches a BaseModule below it."""

    def __init__(self, inner_cfg):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.inner = Block(inner_cfg)

    def init_weights(self):
        nn.init.constant_(self.fc.weight, 5)
        self.inner.init_weights()


@pytest.mark.parametrize("where", ["under_user_code", "under_plain_container"])
def test_bad_config_anywhere_in_the_tree_fails_before_writes(where):
    bad = dict(type="Constnt", layer="Linear")
    net = Net()
    if where == "under_user_code":
        net.extra = PlainUser(bad)
    else:
        net.extra = nn.Sequential(Block(bad))
    before = snapshot(net)
    if where == "under_plain_container":  # MMEngine never reaches it: a warning, strict raises
        with pytest.raises(wi.UnknownTypeError, match="Did you mean 'Constant'"):
            net.init_weights(strict=True)
        assert_untouched(net, before)
        with pytest.warns(wi.UnappliedConfigWarning, match="Did you mean 'Constant'"):
            net.init_weights()
        assert net.is_init
        return
    with pytest.raises(wi.UnknownTypeError, match="Did you mean 'Constant'"):
        net.init_weights()
    assert_untouched(net, before)
