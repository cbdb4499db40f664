"""``weightinit.mmcv``: MMCV 1.7's rules where they differ from MMEngine's, side by side with
MMCV on small ``mmcv.runner.BaseModule`` models — list order with ``Pretrained`` wherever it
stands, the early return of a dict ``Pretrained``, plain children's own ``init_weights``,
helpers imported by name, users' initializers in MMCV's registry — and its errors: the
exception classes MMCV raises, the model untouched."""

from __future__ import annotations

import warnings
from pathlib import Path

import mmcv1_support as support
import pytest
import torch
import torch.nn as nn

pytest.importorskip("mmcv")

support.prepare()
support.quiet_logs()
# in the MMCV 1.x environment these import: a broken install fails there, never skips
import mmcv.runner  # noqa: E402,F401
from mmcv.cnn import INITIALIZERS, ConvModule, bias_init_with_prob, constant_init, normal_init  # noqa: E402
from mmcv.cnn.utils.weight_init import BaseInit as MMCVBaseInit  # noqa: E402
from mmcv.runner import BaseModule, Sequential  # noqa: E402

import weightinit as wi  # noqa: E402
import weightinit.mmcv as wimc  # noqa: E402


@pytest.fixture(autouse=True)
def _uninstalled():
    yield
    wimc.uninstall()


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def same(a: nn.Module, b: nn.Module) -> None:
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def pair(make) -> tuple[nn.Module, nn.Module]:
    """The same model twice (same construction values): MMCV's, and the bridge's."""
    torch.manual_seed(0)
    theirs = make()
    torch.manual_seed(0)
    ours = make()
    return theirs, ours


def bridged(model: nn.Module, **kwargs) -> None:
    with wimc.installed():
        model.init_weights(**kwargs)


def sevens(model: nn.Module, path: Path, drop: tuple[str, ...] = ()) -> str:
    """A checkpoint of ``model``'s own keys, every value 7 (``drop``: keys left out)."""
    torch.save({"state_dict": {k: torch.full_like(v, 7.0) for k, v in model.state_dict().items()
                               if k not in drop}}, path)
    return str(path)


# ===================================================================== MMCV's order


class Child(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Conv2d", val=3.0))
        self.conv = nn.Conv2d(2, 2, 1)


class Listed(BaseModule):
    def __init__(self, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.conv = nn.Conv2d(2, 2, 1)
        self.norm = nn.LayerNorm(2)
        self.child = Child()


def test_list_order_pretrained_where_it_stands_then_children(tmp_path: Path):
    """[Pretrained, Constant(Conv2d)]: the rule after the load wins over it, the child's own
    init_cfg after both (MMEngine would load last, over everything)."""
    ck = sevens(Listed(), tmp_path / "sevens.pth")
    cfg = [dict(type="Pretrained", checkpoint=ck), dict(type="Constant", layer="Conv2d", val=1.0)]
    theirs, ours = pair(lambda: Listed(cfg))
    versions = {n: p._version for n, p in ours.named_parameters()}
    theirs.init_weights()
    bridged(ours)
    same(ours, theirs)
    assert torch.all(ours.conv.weight == 1) and torch.all(ours.conv.bias == 0)
    assert torch.all(ours.norm.weight == 7) and torch.all(ours.child.conv.weight == 3)
    record = wi.get_init_record(ours)
    assert record["norm.weight"].info == f"PretrainedInit: load from {ck}"
    assert record["conv.weight"].info == "ConstantInit: val=1.0, bias=0"
    assert record["child.conv.weight"].info == "ConstantInit: val=3.0, bias=0"
    # each tensor written once: the load of what the rules overwrite is never read
    assert all(p._version - versions[n] == 1 for n, p in ours.named_parameters())
    assert ours.is_init and ours.child.is_init and theirs.child.is_init


def test_dict_pretrained_returns_early_as_mmcv(tmp_path: Path):
    """Children are not initialized (a key the file lacks keeps its construction value),
    ``is_init`` stays False, ``_params_init_info`` stays on every module, nothing is dumped,
    and a second call loads again without a warning."""
    ck = sevens(Listed(), tmp_path / "sevens.pth", drop=("child.conv.bias",))
    theirs, ours = pair(lambda: Listed(dict(type="Pretrained", checkpoint=ck)))
    start = params(ours)
    dumps = []
    for m in (theirs, ours):
        m._dump_init_info = lambda *args, m=m: dumps.append(m)
    theirs.init_weights()
    bridged(ours)
    same(ours, theirs)
    assert torch.equal(ours.child.conv.bias, start["child.conv.bias"])  # MMCV's trap, kept
    assert torch.all(ours.child.conv.weight == 7)  # the child's own Constant(3) never ran
    assert dumps == []
    for m in (theirs, ours):
        assert not m.is_init and not m.child.is_init
        info = m._params_init_info
        assert all(sub.__dict__["_params_init_info"] is info for sub in m.modules())
    assert ours._params_init_info[ours.conv.weight]["init_info"] == (
        f"PretrainedInit: load from {ck}")
    # again: loads again (over what was written since), no "called more than once"
    for m in (theirs, ours):
        with torch.no_grad():
            m.conv.weight.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theirs.init_weights()
        bridged(ours)
    assert torch.all(ours.conv.weight == 7) and torch.all(theirs.conv.weight == 7)
    assert dumps == []  # (not the top level any more: the info left behind says so)


class Backbone(BaseModule):
    """A backbone whose own children carry init_cfg (MMCV skips them after a dict Pretrained)."""

    def __init__(self, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.stem = Child()
        self.extra = nn.Linear(2, 2)


class Detector(BaseModule):
    def __init__(self, checkpoint: str) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=0.5))
        self.backbone = Backbone(dict(type="Pretrained", checkpoint=checkpoint))
        self.head = Child()


def test_nested_dict_pretrained_loads_only_into_its_backbone(tmp_path: Path):
    ck = sevens(Backbone(), tmp_path / "backbone.pth", drop=("extra.weight", "extra.bias"))
    theirs, ours = pair(lambda: Detector(ck))
    theirs.init_weights()
    bridged(ours)
    same(ours, theirs)
    # the parent's rule reached backbone.extra first; the load skips it (missing keys)
    assert torch.all(ours.backbone.extra.weight == 0.5)
    assert torch.all(ours.backbone.stem.conv.weight == 7)
    assert ours.is_init and ours.head.is_init
    assert not ours.backbone.is_init and not ours.backbone.stem.is_init
    assert not hasattr(ours, "_params_init_info")  # the top level dumped and cleaned up


class ConvBase(nn.Conv2d):
    pass


class DeepConv(ConvBase):  # Conv2d is only a grand-base: MMCV's layer='Conv2d' skips it
    pass


class Layers(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Conv2d", val=2.0,
                                       override=dict(name="named", type="Constant", val=5.0)))
        self.near = ConvBase(2, 2, 1)
        self.deep = DeepConv(2, 2, 1)
        self.named = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))


def test_layer_matching_and_overrides_are_mmcvs():
    theirs, ours = pair(Layers)
    deep = ours.deep.weight.detach().clone()
    theirs.init_weights()
    bridged(ours)
    same(ours, theirs)
    assert torch.all(ours.near.weight == 2.0) and torch.equal(ours.deep.weight, deep)
    assert torch.all(ours.named[0].weight == 5.0) and torch.all(ours.named[1].weight == 5.0)


# ===================================================================== user code


class Head(BaseModule):
    """An MMDetection-style head: helpers imported by name, a focal-loss bias."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Conv2d(4, 3, 3)
        self.reg = nn.Conv2d(4, 2, 3)
        self.stem = ConvModule(4, 4, 3, norm_cfg=dict(type="BN"))

    def init_weights(self) -> None:
        super().init_weights()  # the children: ConvModule's own init_weights
        normal_init(self.cls, std=0.01, bias=bias_init_with_prob(0.01))
        constant_init(self.reg, 0.25, bias=1.5)


def test_user_code_and_plain_children_run_as_under_mmcv():
    theirs, ours = pair(Head)
    versions = {n: p._version for n, p in ours.named_parameters()}
    theirs.init_weights()
    bridged(ours)
    # deterministic values identical; normal_ draws of the same distribution
    for name in ("cls.bias", "reg.weight", "reg.bias", "stem.bn.weight", "stem.bn.bias"):
        assert torch.equal(dict(ours.named_parameters())[name],
                           dict(theirs.named_parameters())[name]), name
    assert torch.allclose(ours.cls.bias, torch.full((3,), bias_init_with_prob(0.01)))
    assert abs(float(ours.cls.weight.std()) - 0.01) < 0.003
    record = wi.get_init_record(ours)
    assert record["cls.weight"].kind == "user"
    assert record["cls.weight"].info == "normal_init(std=0.01, bias=-4.59512) in Head.init_weights"
    assert record["stem.conv.weight"].info == "kaiming_init() in ConvModule.init_weights"
    assert all(p._version - versions[n] == 1 for n, p in ours.named_parameters())


class Wrapper(BaseModule):
    """ConvModule is a plain nn.Module with its own init_weights: MMCV calls it as a child."""

    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Conv2d", val=9.0))
        self.block = ConvModule(2, 2, 1, norm_cfg=dict(type="BN"))


def test_plain_child_init_weights_runs_after_the_parents_rules():
    theirs, ours = pair(Wrapper)
    version = ours.block.conv.weight._version
    theirs.init_weights()
    bridged(ours)
    assert not torch.all(ours.block.conv.weight == 9.0)  # ConvModule's kaiming_init won
    assert abs(float(ours.block.conv.weight.std()) - float(theirs.block.conv.weight.std())) < 0.5
    assert wi.get_init_record(ours)["block.conv.weight"].kind == "user"
    assert ours.block.conv.weight._version == version + 1  # the parent's Constant: never


@INITIALIZERS.register_module(name="HalfOnesMMCV", force=True)
class HalfOnes(MMCVBaseInit):
    """A user's initializer registered with MMCV: weights 0.5, bias as MMCV's BaseInit."""

    def __call__(self, module: nn.Module) -> None:
        def init(m):
            if isinstance(m, nn.Linear):
                nn.init.constant_(m.weight, 0.5)
                nn.init.constant_(m.bias, self.bias)

        module.apply(init)


class UsesHalfOnes(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=[dict(type="HalfOnesMMCV", bias=0.25),
                                   dict(type="Uniform", layer="Conv2d")])
        self.fc = nn.Linear(4, 3)
        self.conv = nn.Conv2d(3, 3, 1)


def test_initializer_registered_with_mmcv_and_mmcvs_uniform_defaults():
    theirs, ours = pair(UsesHalfOnes)
    theirs.init_weights()
    bridged(ours)
    assert torch.equal(ours.fc.weight, theirs.fc.weight) and torch.all(ours.fc.bias == 0.25)
    record = wi.get_init_record(ours)
    assert record["fc.weight"].kind == "initializer"
    assert record["fc.weight"].info == "HalfOnes, bias=0.25"  # its own text, as in MMCV
    assert record["conv.weight"].info == "UniformInit: a=0.0, b=1.0, bias=0"  # MMCV's floats
    assert 0 <= float(ours.conv.weight.min()) and float(ours.conv.weight.max()) <= 1
    # weightinit's own runs keep weightinit's Uniform while the bridge is installed
    with wimc.installed():
        net = nn.Sequential(nn.Conv2d(2, 2, 1))
        assert wi.initialize(net, dict(type="Uniform", layer="Conv2d"))[
            "0.weight"].info == "UniformInit: a=0, b=1, bias=0"


def test_seeded_values_depend_only_on_the_seed():
    a, b, c = (pair(Head)[i] for i in (0, 1, 1))
    with wimc.installed():
        a.init_weights(seed=3)
        torch.manual_seed(123)
        b.init_weights(seed=3)
        c.init_weights(seed=4)
    same(a, b)  # user code's draws too (normal_init, ConvModule's kaiming_init)
    assert not torch.equal(a.cls.weight, c.cls.weight)
    assert torch.equal(a.reg.weight, c.reg.weight)  # constants are constants


def test_deferred_model_is_materialized_once():
    eager = Wrapper()
    with wimc.installed():
        with wi.deferred():
            lazy = Wrapper()
        assert all(p.device.type == "meta" for p in lazy.parameters())
        eager.init_weights()
        lazy.init_weights()
    assert all(p.device.type == "cpu" for p in lazy.parameters())
    assert torch.equal(lazy.block.bn.weight, eager.block.bn.weight)
    assert lazy.block.conv.weight._version <= 1


def test_dry_run_plans_mmcvs_order(tmp_path: Path):
    ck = sevens(Listed(), tmp_path / "sevens.pth")
    cfg = [dict(type="Pretrained", checkpoint=ck), dict(type="Constant", layer="Conv2d", val=1.0)]
    with wimc.installed():
        model = Listed(cfg)
        plan = wi.plan(model)
    assert plan["conv.weight"].owner_info == "ConstantInit: val=1.0, bias=0"
    assert plan["norm.weight"].owner_info == f"PretrainedInit: load from {ck}"
    assert plan["child.conv.weight"].owner_info == "ConstantInit: val=3.0, bias=0"


# ===================================================================== errors


def _raised(fn) -> BaseException:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the class is what is compared
        return err
    raise AssertionError("nothing raised")


class Configured(BaseModule):
    def __init__(self, init_cfg) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Conv2d", val=1.0))
        self.conv = nn.Conv2d(2, 2, 1)
        self.body = Sequential(nn.Linear(2, 2), init_cfg=init_cfg)


@pytest.mark.parametrize("cfg, mmcv_class, ours, text", [
    (dict(type="NoSuchInit"), KeyError, wi.UnknownTypeError,
     "'NoSuchInit' is not in the weight initializer registry"),
    (dict(type="Constant", layer="Linear"), TypeError, wi.InitTypeError, "val"),
    (dict(type="Constant", val=1, bias="x", layer="Linear"), TypeError, wi.InitTypeError,
     "bias"),
    (dict(type="Constant", val=1, override=dict(type="Constant", val=2)), ValueError,
     wi.OverrideError, 'must contain the key "name"'),
    (dict(type="Constant", val=1, override=dict(name="nope")), RuntimeError,
     wi.OverrideTargetError, "module did not have attribute 'nope'"),
    (dict(type="Normal", layer="Linear", std=0.1, distribution="wide"), TypeError,
     wi.InitTypeError, "distribution"),
    ([dict(type="Constant", val=1, layer="Linear"), "Constant"], AttributeError,
     wi.ConfigEntryTypeError, "init_cfg[1]: must be a dict, got str"),
    ("Constant", TypeError, wi.ConfigStructureError, "must be a dict or a list of dict"),
])
def test_bad_config_is_mmcvs_exception_class_and_the_model_is_untouched(cfg, mmcv_class, ours,
                                                                          text):
    theirs = _raised(Configured(cfg).init_weights)
    assert isinstance(theirs, mmcv_class)
    model = Configured(cfg)
    before = params(model)
    err = _raised(lambda: bridged(model))
    assert isinstance(err, ours) and isinstance(err, mmcv_class) and isinstance(err, wi.InitError)
    assert text in str(err) and "body (Sequential) init_cfg" in str(err)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not any(m.is_init for m in model.modules() if isinstance(m, BaseModule))
    assert not any("_params_init_info" in vars(m) for m in model.modules())


class Broken(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=3.0))
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.orthogonal_(self.a.weight)
        self.b.weight.data.mul_(2)
        raise ValueError("user code failed")


class HoldsBroken(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=2.0))
        self.broken = Broken()


def test_failure_in_user_code_restores_the_model():
    theirs = HoldsBroken()
    with pytest.raises(ValueError, match="user code failed"):
        theirs.init_weights()
    assert all("_params_init_info" in vars(m) for m in theirs.modules())  # MMCV leaves it
    model = HoldsBroken()
    before = params(model)
    with pytest.raises(ValueError, match="user code failed"):
        bridged(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not model.is_init and not model.broken.is_init and wi.get_init_record(model) is None
    assert not any("_params_init_info" in vars(m) for m in model.modules())


def test_second_call_warns_as_mmcv_and_so_does_an_initialized_child():
    def caught(fn) -> list[str]:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fn()
        return [str(x.message) for x in w if issubclass(x.category, UserWarning)]

    theirs, ours = pair(Listed)
    theirs.child.init_weights()
    with wimc.installed():
        ours.child.init_weights()
    expected = ["init_weights of Child has been called more than once."]
    assert caught(theirs.init_weights) == expected
    with wimc.installed():
        found = caught(ours.init_weights)
    assert found == expected
    assert caught(theirs.init_weights) == ["init_weights of Listed has been called more than once."]
    with wimc.installed():
        again = caught(ours.init_weights)
    assert again == ["init_weights of Listed has been called more than once."]
    same(ours, theirs)


class Counts(BaseModule):
    """User code whose every call writes something new (MMCV calls it again when its
    parent initializes, even if it is initialized)."""

    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=2.0, bias=0.0))
        self.fc = nn.Linear(3, 3)
        self.calls = 0

    def init_weights(self) -> None:
        super().init_weights()
        self.calls += 1
        with torch.no_grad():
            self.fc.bias.fill_(float(self.calls))


class HoldsCounts(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Conv2d", val=0.5, bias=0.0))
        self.counts = Counts()
        self.conv = nn.Conv2d(2, 2, 1)


def test_initialized_childs_own_init_weights_runs_again_as_under_mmcv():
    def caught(model) -> list[str]:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            model.init_weights()
        return [str(x.message) for x in w if issubclass(x.category, UserWarning)]

    theirs, ours = pair(HoldsCounts)
    theirs.counts.init_weights()
    with wimc.installed():
        ours.counts.init_weights()
    assert theirs.counts.calls == ours.counts.calls == 1
    expected = caught(theirs)
    with wimc.installed():
        found = caught(ours)
    assert theirs.counts.calls == 2 and ours.counts.calls == 2  # called again, not skipped
    assert found == expected == ["init_weights of Counts has been called more than once."]
    assert torch.all(ours.counts.fc.bias == 2.0) and torch.all(ours.counts.fc.weight == 2.0)
    same(ours, theirs)
    record = wi.get_init_record(ours)
    assert record["counts.fc.bias"].info == "fill_(2) in Counts.init_weights"
    assert record["conv.weight"].info.startswith("ConstantInit: val=0.5")
