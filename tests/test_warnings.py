"""Warnings the user must act on: ``weightinit.InitWarning`` subclasses, visible with Python's
default filters, once per location; ``strict=True`` (``--strict``) raises their errors instead,
before anything is written."""

from __future__ import annotations

import io
import textwrap
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.cli import main

WARNINGS = ["UnappliedConfigWarning", "UnmatchedLayerWarning", "EmptyRuleWarning",
            "CheckpointKeysWarning", "RepeatedInitWarning"]


def shown(fn: Callable[[], object]) -> list[warnings.WarningMessage]:
    """The library warnings ``fn`` issues under Python's default filters."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        fn()
    return [w for w in caught if issubclass(w.category, wi.InitWarning)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():  # bit for bit
        assert torch.equal(after[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


class Net(wi.BaseModule):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


class Leaf(wi.BaseModule):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.fc = nn.Linear(2, 2)


class Top(wi.BaseModule):
    """A BaseModule whose init_cfg sits under a plain nn.Sequential: MMEngine never reaches it."""

    def __init__(self, leaf_cfg):
        super().__init__(dict(type="Constant", layer="Conv2d", val=1))
        self.conv = nn.Conv2d(2, 2, 1)
        self.seq = nn.Sequential(Leaf(leaf_cfg))


# ------------------------------------------------------------------ the classes


@pytest.mark.parametrize("name", WARNINGS)
def test_each_warning_is_an_exported_init_warning(name):
    cls = getattr(wi, name)
    assert issubclass(cls, wi.InitWarning) and issubclass(wi.InitWarning, UserWarning)
    assert name in wi.__all__ and "InitWarning" in wi.__all__
    assert not issubclass(cls, wi.InitError)


# ------------------------------------------------------------------ layer names that match nothing


def test_layer_typo_warns_where_it_was_declared_with_the_closest_class():
    net = Net([dict(type="Constant", layer="Conv2d", val=1),
               dict(type="Kaiming", layer="Conv2D")])
    got = shown(net.init_weights)
    assert [w.category for w in got] == [wi.UnmatchedLayerWarning]
    text = str(got[0].message)
    assert "<root> (Net) init_cfg[1]" in text and "KaimingInit" in text
    assert "'Conv2D' (did you mean 'Conv2d'?)" in text
    assert got[0].filename == __file__  # points at the user's call


def test_layer_typo_in_initialize_on_any_module():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    got = shown(lambda: wi.initialize(net, dict(type="Constant", layer="linear", val=0)))
    assert len(got) == 1 and got[0].category is wi.UnmatchedLayerWarning
    assert "<root> (Sequential) init_cfg: ConstantInit layer 'linear' (did you mean " \
           "'Linear'?)" in str(got[0].message)
    got = shown(lambda: wi.initialize(net, dict(type="Constant", layer="Linaer", val=0)))
    assert "did you mean 'Linear'?" in str(got[0].message)


def test_matching_names_and_catch_all_lists_do_not_warn():
    cfgs = [dict(type="Constant", layer="_ConvNd", val=1),  # a base class name matches
            dict(type="Constant", layer=["_BatchNorm", "GroupNorm"], val=1),  # one of them
            dict(type="Normal", layer=["Linear", "Conv3d"])]
    assert shown(Net(cfgs).init_weights) == []
    got = shown(Net(dict(type="Normal", layer=["Linear", "conv2d", "Foo"])).init_weights)
    assert len(got) == 1  # in a list that matches, only a name that is a case typo warns
    assert "'conv2d' (did you mean 'Conv2d'?)" in str(got[0].message)
    assert "'Foo'" not in str(got[0].message)


def test_layer_is_looked_for_in_the_rules_own_subtree_only():
    class Outer(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.head = Leaf(dict(type="Constant", layer="Conv2d", val=1))

    got = shown(Outer().init_weights)
    assert len(got) == 1
    assert str(got[0].message).startswith("head (Leaf) init_cfg: ConstantInit layer 'Conv2d' "
                                          "matches no module of head (Leaf)")


# ------------------------------------------------------------------ once per location


def test_shown_once_per_location_under_the_default_filter():
    def repeated():
        for _ in range(3):
            Net(dict(type="Kaiming", layer="conv2d")).init_weights()
        Net(dict(type="Kaiming", layer="conv2d")).init_weights()  # another line: shown again

    got = shown(repeated)
    assert len(got) == 2 and got[0].lineno != got[1].lineno


# ------------------------------------------------------------------ each warning, and strict


def test_unapplied_config_under_plain_sequential_warns_and_strict_raises():
    m = Top(dict(type="Constant", layer="Linear", val=4))
    before = snapshot(m)
    with pytest.raises(wi.UnappliedConfigError, match="seq.0 \\(Leaf\\): its init_cfg is never "
                                                      "applied"):
        m.init_weights(strict=True)
    assert_identical(m, before)
    assert not m.is_init
    with pytest.raises(wi.UnappliedConfigError):
        wi.plan(m, strict=True)
    got = shown(m.init_weights)
    assert [w.category for w in got] == [wi.UnappliedConfigWarning]
    assert "weightinit.Sequential" in str(got[0].message)
    assert torch.equal(m.seq[0].fc.weight, before["seq.0.fc.weight"])  # as in MMEngine


def test_invalid_config_under_plain_sequential_warns_instead_of_raising():
    m = Top(dict(type="Normal", layer="Linear", std=-1))
    before = snapshot(m)
    with pytest.raises(wi.InitValueError, match="seq.0 \\(Leaf\\) init_cfg") as err:
        m.init_weights(strict=True)  # the validation error itself, not the "never applied" one
    assert_identical(m, before)
    got = shown(m.init_weights)  # MMEngine never looks at it, so it initializes the rest
    assert {w.category for w in got} == {wi.UnappliedConfigWarning}
    assert any(str(err.value) in str(w.message) for w in got)
    assert m.is_init and torch.all(m.conv.weight == 1)


def test_invalid_config_under_user_init_weights_that_never_calls_it_warns():
    class User(nn.Module):
        def __init__(self):
            super().__init__()
            self.leaf = Leaf(dict(type="Constnt", layer="Linear"))

        def init_weights(self):
            pass  # never calls self.leaf.init_weights()

    class Root(wi.BaseModule):
        def __init__(self):
            super().__init__(dict(type="Constant", layer="Linear", val=2))
            self.user = User()

    m = Root()
    before = snapshot(m)
    with pytest.raises(wi.UnknownTypeError, match="Did you mean 'Constant'"):
        m.init_weights(strict=True)
    assert_identical(m, before)
    got = shown(m.init_weights)
    assert len(got) == 1 and got[0].category is wi.UnappliedConfigWarning
    assert "Did you mean 'Constant'" in str(got[0].message)
    assert torch.all(m.user.leaf.fc.weight == 2)


def test_layer_typo_strict_raises_override_target_error_everywhere():
    cfg = dict(type="Constant", layer="linear", val=3)
    net = Net(cfg)
    before = snapshot(net)
    for call in (lambda: net.init_weights(strict=True),
                 lambda: wi.initialize(net, cfg, strict=True),
                 lambda: wi.plan(net, strict=True),
                 lambda: wi.plan(net, cfg, strict=True)):
        with pytest.raises(wi.OverrideTargetError, match="did you mean 'Linear'"):
            call()
        assert_identical(net, before)
    assert not net.is_init


def test_strict_reaches_init_weights_called_from_user_code():
    class User(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.leaf = Leaf(dict(type="Constant", layer="linear", val=1))

        def init_weights(self):
            nn.init.constant_(self.fc.weight, 7)
            self.leaf.init_weights()  # no strict here: inherited from the outermost call

    class Root(wi.BaseModule):
        def __init__(self):
            super().__init__(dict(type="Constant", layer="Linear", val=2))
            self.user = User()

    m = Root()
    before = snapshot(m)
    with pytest.raises(wi.OverrideTargetError, match="user.leaf \\(Leaf\\) init_cfg"):
        m.init_weights(strict=True)
    assert_identical(m, before)  # the user code's write is rolled back
    got = shown(m.init_weights)
    assert [w.category for w in got] == [wi.UnmatchedLayerWarning]


def test_rule_without_target_warns_and_strict_raises():
    m = Leaf(dict(type="Constant", val=7))
    before = snapshot(m)
    with pytest.raises(wi.OverrideTargetError, match="has neither 'layer' nor 'override'"):
        m.init_weights(strict=True)
    assert_identical(m, before)
    got = shown(m.init_weights)
    assert [w.category for w in got] == [wi.EmptyRuleWarning]
    assert "<root> (Leaf) init_cfg" in str(got[0].message)


def test_checkpoint_keys_warn_and_strict_raises(tmp_path):
    state = Net().state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    m = Net(dict(type="Pretrained", checkpoint=str(path)))
    before = snapshot(m)
    with pytest.raises(wi.CheckpointMismatchError, match="missing in checkpoint: fc.bias"):
        m.init_weights(strict=True)
    assert_identical(m, before)
    got = shown(m.init_weights)
    assert [w.category for w in got] == [wi.CheckpointKeysWarning]
    assert "<root> (Net) init_cfg: loading into <root> (Net)" in str(got[0].message)
    assert "unexpected in checkpoint: extra.weight" in str(got[0].message)
    assert torch.equal(m.conv.weight, state["conv.weight"])


def test_second_init_weights_warns_and_strict_raises():
    m = Leaf(dict(type="Constant", layer="Linear", val=1))
    m.init_weights()
    with torch.no_grad():
        m.fc.weight.fill_(5)
    before = snapshot(m)
    got = shown(m.init_weights)
    assert [w.category for w in got] == [wi.RepeatedInitWarning]
    assert str(got[0].message) == "init_weights of Leaf has been called more than once."
    with pytest.raises(wi.InitRuntimeError, match="called more than once"):
        m.init_weights(strict=True)
    assert_identical(m, before)


# ------------------------------------------------------------------ the command line


@pytest.fixture
def typo(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(textwrap.dedent("""
        model:
          type: torch.nn.Sequential
          args:
            - {type: torch.nn.Linear, in_features: 4, out_features: 4}
        init_cfg:
          - {type: Constant, layer: linear, val: 1}
          - {type: Normal, layer: Linear, std: 0.1}
        input: {shape: [2, 4]}
        """))
    return path


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_prints_the_warning_on_stderr(typo):
    rc, _, err = cli("plan", typo, "--summary")
    assert rc == 0
    assert err.startswith("weightinit: warning: <root> (Sequential) init_cfg[0]: ConstantInit "
                          "layer 'linear' (did you mean 'Linear'?)"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["plan", "init", "check"])
def test_cli_strict_exits_2_with_one_line(typo, tmp_path, command):
    extra = ["--out", tmp_path / "m.safetensors"] if command == "init" else []
    rc, _, err = cli(command, typo, "--strict", *extra)
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("weightinit: error: <root> (Sequential) init_cfg[0]: ConstantInit "
                          "layer 'linear' (did you mean 'Linear'?)")
    assert not (tmp_path / "m.safetensors").exists()
