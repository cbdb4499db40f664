"""Registry, build_from_cfg and the built-in initializers' constructors."""

from __future__ import annotations

import pytest
import torch.nn as nn

import weightinit as wi


def test_builtin_names_are_mmengines():
    names = {"Constant", "Xavier", "Normal", "TruncNormal", "Uniform", "Kaiming",
             "Caffe2Xavier", "Pretrained"}
    assert names <= set(wi.WEIGHT_INITIALIZERS.module_dict)
    assert wi.WEIGHT_INITIALIZERS.get("Kaiming") is wi.KaimingInit
    assert wi.WEIGHT_INITIALIZERS.get("Pretrained") is wi.PretrainedInit


def test_register_as_decorator_and_build():
    reg = wi.Registry("thing")

    @reg.register_module()
    class Foo:
        def __init__(self, x=1):
            self.x = x

    @reg.register_module(name="Bar")
    class _Bar(Foo):
        pass

    assert "Foo" in reg and len(reg) == 2
    assert reg.build(dict(type="Foo", x=3)).x == 3
    assert isinstance(wi.build_from_cfg(dict(type="Bar"), reg), _Bar)
    assert wi.build_from_cfg(dict(type=Foo), reg, default_args=dict(x=5)).x == 5


def test_register_twice_needs_force():
    reg = wi.Registry("thing")
    reg.register_module(name="A", module=int)
    with pytest.raises(wi.InitKeyError, match="A is already registered in the thing registry"):
        reg.register_module(name="A", module=float)
    reg.register_module(name="A", module=float, force=True)
    assert reg.get("A") is float


def test_unknown_type_lists_close_matches():
    with pytest.raises(wi.UnknownTypeError) as err:
        wi.build_from_cfg(dict(type="Kaimng"), wi.WEIGHT_INITIALIZERS)
    assert isinstance(err.value, KeyError)
    assert "'Kaimng' is not in the weight initializer registry" in str(err.value)
    assert "Did you mean 'Kaiming'" in str(err.value)


def test_build_errors():
    with pytest.raises(wi.InitKeyError, match='must contain the key "type"'):
        wi.build_from_cfg(dict(val=1), wi.WEIGHT_INITIALIZERS)
    with pytest.raises(wi.InitTypeError, match="cfg must be a dict"):
        wi.build_from_cfg("Constant", wi.WEIGHT_INITIALIZERS)
    with pytest.raises(wi.InitTypeError, match="type must be a str or a class"):
        wi.build_from_cfg(dict(type=3), wi.WEIGHT_INITIALIZERS)


def test_models_registry_builds_users_models():
    @wi.MODELS.register_module(force=True)
    class TinyNet(nn.Module):
        def __init__(self, width=4):
            super().__init__()
            self.fc = nn.Linear(width, 2)

    net = wi.MODELS.build(dict(type="TinyNet", width=3))
    assert net.fc.in_features == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(bias="0"), "bias must be a number"),
    (dict(bias_prob=1), "bias_prob type must be float"),
    (dict(layer=3), "layer must be a str or a list of str"),
    (dict(layer=["Linear", 2]), "layer must be a str or a list of str"),
])
def test_base_init_argument_types(kwargs, match):
    with pytest.raises(wi.InitTypeError, match=match) as err:
        wi.NormalInit(**kwargs)
    assert isinstance(err.value, TypeError)


def test_bias_prob_sets_bias():
    rule = wi.ConstantInit(val=1, bias_prob=0.01)
    assert rule.bias == pytest.approx(wi.bias_init_with_prob(0.01))


def test_caffe2xavier_fixes_its_arguments():
    with pytest.raises(TypeError, match="multiple values"):
        wi.Caffe2XavierInit(a=2)
    rule = wi.Caffe2XavierInit(layer="Conv2d")
    assert (rule.a, rule.mode, rule.nonlinearity, rule.distribution) == (
        1, "fan_in", "leaky_relu", "uniform")


def test_init_info_texts_match_mmengine_format():
    assert wi.ConstantInit(val=1)._get_init_info() == "ConstantInit: val=1, bias=0"
    assert wi.NormalInit(std=0.01)._get_init_info() == "NormalInit: mean=0, std=0.01, bias=0"
    assert wi.PretrainedInit("a.pth")._get_init_info() == "PretrainedInit: load from a.pth"


def test_is_model_wrapper():
    assert wi.is_model_wrapper(nn.DataParallel(nn.Linear(2, 2)))
    assert not wi.is_model_wrapper(nn.Linear(2, 2))
