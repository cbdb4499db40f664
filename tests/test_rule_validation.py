"""A bad rule argument is a library error before any write: nothing fails or turns non-finite
while writing, and the model (eager or deferred) is left bit-identical."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.rules.base import BaseInit

NAN, INF = float("nan"), float("inf")


def eager() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Conv2d(4, 4, 3))


def lazy() -> nn.Sequential:
    with wi.deferred():
        return nn.Sequential(nn.Linear(4, 4), nn.Conv2d(4, 4, 3))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        if v.is_meta:
            assert after[k].is_meta, f"{k} left meta"
        else:
            assert torch.equal(after[k], v), f"{k} changed"


def assert_all_meta(model: nn.Module) -> None:
    assert all(t.is_meta for t in model.state_dict().values())


def expect(model: nn.Module, cfg, err: type[Exception], match: str, **kw) -> None:
    """``initialize`` raises exactly ``err`` matching ``match`` and writes nothing."""
    before = snapshot(model)
    with pytest.raises(err, match=match) as info:
        wi.initialize(model, cfg, **kw)
    assert type(info.value) is err
    assert_untouched(model, before)


def expect_plan(model: nn.Module, cfg, err: type[Exception], match: str, **kw) -> None:
    with pytest.raises(err, match=match) as info:
        wi.plan(model, cfg, **kw)
    assert type(info.value) is err


def L(type_: str, **kw):  # noqa: N802 - reads like a config
    return dict(type=type_, layer=["Linear", "Conv2d"], **kw)


# ------------------------------------------------------------------ non-finite / inconsistent arguments
# Raised while building the rule (the constructor, via parse), so plan() raises it too.

CONFIG = [
    (L("Uniform", a=1, b=0), r"Uniform needs a < b, got a=1, b=0\. Fix: give the lower bound as a"),
    (L("Uniform", a=0.5, b=0.5), r"Uniform needs a < b, got a=0\.5, b=0\.5"),
    (L("Uniform", a=-INF, b=0), r"a must be a finite number, got -inf\. Fix: give a finite lower"),
    (L("Uniform", a=0, b=NAN), r"b must be a finite number, got nan\. Fix: give a finite upper"),
    (L("Uniform", a=-1.7e308, b=1.7e308), r"Uniform: the width b - a of \[a=-1\.7e\+308, b=1\.7e\+308\] "
                                          r"is not a finite number"),
    (L("Normal", std=NAN), r"std must be a finite number, got nan\. Fix: give std a finite value"),
    (L("Normal", mean=NAN), r"mean must be a finite number, got nan\. Fix: give mean a finite"),
    (L("Normal", std=INF), r"std must be a finite number, got inf"),
    (L("Normal", std=10**400), r"std must be a finite number, got 1000000"),  # an int beyond float
    (L("TruncNormal", std=INF), r"std must be a finite number, got inf"),
    (L("TruncNormal", mean=NAN), r"mean must be a finite number, got nan"),
    (L("TruncNormal", a=-INF), r"a must be a finite number, got -inf"),
    (L("TFTruncNormal", mean=1e308, std=1e308), r"TFTruncNormal: the bound mean \+ a\*std = "),
    (L("Xavier", gain=NAN), r"gain must be a finite number, got nan\. Fix: give gain a finite"),
    (L("Xavier", gain=INF), r"gain must be a finite number, got inf"),
    (L("Xavier", gain=1e200), r"gain=1e\+200 is too large: gain² \(the variance factor\) is not"),
    (L("VarianceScaling", scale=NAN), r"scale must be a finite number, got nan"),
    (L("VarianceScaling", scale=INF), r"scale must be a finite number, got inf"),
    (L("Orthogonal", gain=NAN), r"gain must be a finite number, got nan"),
    (L("Kaiming", a=INF), r"a must be a finite number, got inf\. Fix: give the negative slope"),
    (L("Kaiming", a=1e200, nonlinearity="leaky_relu"),
     r"a=1e\+200 gives a leaky_relu gain of 0\.0, so every weight would be 0"),
    (L("Constant", val=NAN), r"val must be a finite number, got nan\. Fix: give val a finite"),
    (L("Constant", val=INF), r"val must be a finite number, got inf"),
    (L("Constant", val=-INF), r"val must be a finite number, got -inf"),
    (L("Constant", val=1, bias=NAN), r"bias must be a finite number, got nan\. Fix: give bias a"),
    (L("Kaiming", bias=INF), r"bias must be a finite number, got inf"),
    (L("Orthogonal", bias=NAN), r"bias must be a finite number, got nan"),
    (L("Dirac", bias=NAN), r"bias must be a finite number, got nan"),
    (L("Zeros", bias=-INF), r"bias must be a finite number, got -inf"),
    (L("Normal", bias_prob=1e-320), r"bias_prob=1e-320 gives a bias of -inf, which is not finite"),
    (dict(type="LSUV", input_shape=(2, 4), tol=NAN), r"tol must be a finite number, got nan"),
    (dict(type="LSUV", input_shape=(2, 4), target_std=INF),
     r"target_std must be a finite number, got inf"),
    (dict(type="LSUV", input_shape=(2, 4), seed=1.5), r"seed must be an int, got float"),
]


@pytest.mark.parametrize("cfg,match", CONFIG, ids=[str(i) for i in range(len(CONFIG))])
@pytest.mark.parametrize("build", [eager, lazy])
def test_bad_argument_raises_before_any_write(build, cfg, match):
    err = wi.InitTypeError if "seed" in cfg else wi.InitValueError
    m = build()
    expect(m, cfg, err, r"<root> \(Sequential\) init_cfg: " + match)
    expect_plan(m, cfg, err, match)
    if build is lazy:
        assert_all_meta(m)


def test_bad_argument_in_an_override_names_the_override():
    m = eager()
    cfg = dict(type="Constant", val=1, layer="Linear",
               override=dict(name="1", type="Normal", std=NAN))
    expect(m, cfg, wi.InitValueError,
           r"<root> \(Sequential\) init_cfg\.override: std must be a finite number, got nan")


def test_bad_argument_in_init_weights_leaves_the_base_module_untouched():
    class Net(wi.BaseModule):
        def __init__(self, init_cfg):
            super().__init__(init_cfg)
            self.fc = nn.Linear(4, 4)
            self.conv = nn.Conv2d(4, 4, 3)

    for cfg, err, match in [
        (L("Uniform", a=2, b=1), wi.InitValueError, r"Uniform needs a < b, got a=2, b=1"),
        (L("Constant", val=1e300), wi.ShapeError, r"val = 1e\+300 is beyond the largest finite"),
        (dict(type="Dirac", layer="Conv2d", groups=3), wi.ShapeError,
         r"4 output channels are not divisible by groups=3"),
    ]:
        torch.manual_seed(0)
        net = Net(cfg)
        before = snapshot(net)
        with pytest.raises(err, match=match):
            net.init_weights()
        assert_untouched(net, before)
        assert not net.is_init


def test_the_constructors_raise_the_same():
    with pytest.raises(wi.InitValueError, match=r"std must be a finite number, got nan"):
        wi.NormalInit(std=NAN)
    with pytest.raises(wi.InitValueError, match=r"Uniform needs a < b, got a=3, b=-3"):
        wi.UniformInit(a=3, b=-3)
    with pytest.raises(wi.InitValueError, match=r"bias must be a finite number, got inf"):
        wi.ConstantInit(val=0, bias=INF)
    with pytest.raises(ValueError):  # MMEngine-compatible base class
        wi.XavierInit(gain=NAN)
    with pytest.raises(wi.InitTypeError, match=r"std must be a number, got str"):  # unchanged
        wi.NormalInit(std="1")


# ------------------------------------------------------------------ values the target dtype cannot hold
# Found while planning (check_fill): a ShapeError naming the entry, the tensor and the value.

DTYPE = [
    (L("Constant", val=1e300), r"0 \(Linear\)\.weight: val = 1e\+300 is beyond "
                               r"the largest finite float32 value \(3\.40282e\+38\)"),
    (L("Constant", val=-1e39), r"0 \(Linear\)\.weight: val = -1e\+39 is beyond"),
    (L("Constant", val=1, bias=1e300), r"0 \(Linear\)\.bias: bias = 1e\+300 is beyond the "
                                       r"largest finite float32"),
    (L("Normal", mean=1e39), r"0 \(Linear\)\.weight: mean = 1e\+39 is beyond"),
    (L("Normal", std=1e38), r"0 \(Linear\)\.weight: \|mean\| \+ 10\*std = 1e\+39 is beyond"),
    (L("Uniform", a=-1e39, b=0), r"0 \(Linear\)\.weight: a = -1e\+39 is beyond"),
    (L("Uniform", a=-3e38, b=3e38), r"0 \(Linear\)\.weight: b - a = 6e\+38 is beyond"),
    (L("TruncNormal", a=-1e39, b=1e39), r"0 \(Linear\)\.weight: a = -1e\+39 is beyond"),
    (L("Orthogonal", gain=1e39), r"0 \(Linear\)\.weight: gain = 1e\+39 is beyond"),
    (L("Xavier", gain=1e100), r"0 \(Linear\)\.weight: \|mean\| \+ 10\*std \(computed from "
                              r"gain=1e\+100 and the fans\) = 5e\+100 is beyond"),
    (L("Kaiming", bias=-1e39), r"0 \(Linear\)\.bias: bias = -1e\+39 is beyond"),
    (L("VarianceScaling", scale=1e300, distribution="uniform"),
     r"0 \(Linear\)\.weight: a \(computed from scale=1e\+300 and the fan_in\) = -8\.66025e\+149"),
    (dict(type="Dirac", layer="Conv2d", groups=3),
     r"1 \(Conv2d\)\.weight: Dirac: 4 output channels are not divisible by groups=3; set "
     r"groups to a divisor of 4 or leave groups unset to use the conv's own\. Fix: restrict"),
]


@pytest.mark.parametrize("cfg,match", DTYPE, ids=[str(i) for i in range(len(DTYPE))])
@pytest.mark.parametrize("build", [eager, lazy])
def test_value_the_dtype_cannot_hold_raises_while_planning(build, cfg, match):
    m = build()
    full = r"<root> \(Sequential\) init_cfg: \w+Init cannot initialize " + match
    expect(m, cfg, wi.ShapeError, full)
    expect_plan(m, cfg, wi.ShapeError, full)
    if build is lazy:
        assert_all_meta(m)


def test_float16_target_rejects_what_float32_holds():
    cfg = dict(type="Constant", layer="Linear", val=1e5)
    m = lazy()
    expect(m, cfg, wi.ShapeError, r"val = 100000 is beyond the largest finite float16 value "
                                  r"\(65504\), so the fill would overflow to inf", dtype=torch.float16)
    expect_plan(m, cfg, wi.ShapeError, r"largest finite float16 value", dtype=torch.float16)
    assert_all_meta(m)
    wi.plan(m, cfg, dtype=torch.float32)  # plans fine
    wi.initialize(m, cfg)  # declared float32: exact
    assert torch.equal(m[0].weight, torch.full((4, 4), 1e5))
    assert torch.equal(m[0].bias, torch.zeros(4))


def test_float16_limits_are_exact():
    m = lazy()
    wi.initialize(m, dict(type="Constant", layer="Linear", val=65504, bias=-65504),
                  dtype=torch.float16)
    assert m[0].weight.dtype == torch.float16
    assert torch.equal(m[0].weight, torch.full((4, 4), 65504, dtype=torch.float16))
    assert torch.equal(m[0].bias, torch.full((4,), -65504, dtype=torch.float16))
    # A std whose draws overflow float16 (10·std > 65504) is refused; a smaller one is drawn.
    m = lazy()
    expect(m, dict(type="Normal", layer="Linear", std=7000), wi.ShapeError,
           r"\|mean\| \+ 10\*std = 70000 is beyond the largest finite float16", dtype=torch.float16)
    wi.initialize(m, dict(type="Normal", layer="Linear", std=6000), dtype=torch.float16, seed=0)
    assert torch.isfinite(m[0].weight).all() and m[0].weight.dtype == torch.float16


def test_bfloat16_target():
    m = lazy()
    expect(m, dict(type="Constant", layer="Linear", val=1e39), wi.ShapeError,
           r"val = 1e\+39 is beyond the largest finite bfloat16 value", dtype=torch.bfloat16)
    assert_all_meta(m)


def test_random_fill_of_an_integer_parameter_is_refused():
    class WithIndex(nn.Module):
        def __init__(self):
            super().__init__()
            self.idx = nn.Parameter(torch.arange(3), requires_grad=False)

    m = WithIndex()
    expect(m, dict(type="Normal", param="idx"), wi.ShapeError,
           r"cannot initialize <root> \(WithIndex\)\.idx: a random normal fill needs a "
           r"floating-point tensor, got int64")
    wi.initialize(m, dict(type="Constant", param="idx", val=7))  # a constant is fine
    assert torch.equal(m.idx, torch.full((3,), 7))


# ------------------------------------------------------------------ Dirac groups


def test_dirac_groups_checked_while_planning():
    m = lazy()
    expect_plan(m, dict(type="Dirac", layer="Conv2d", groups=3), wi.ShapeError,
                r"1 \(Conv2d\)\.weight: Dirac: 4 output channels are not divisible by groups=3")
    expect(m, dict(type="Dirac", layer="Conv2d", groups=3), wi.ShapeError, r"groups=3")
    assert_all_meta(m)


def test_dirac_groups_positive_controls():
    m = eager()
    wi.initialize(m, dict(type="Dirac", layer="Conv2d", groups=2))
    expected = nn.init.dirac_(torch.empty(4, 4, 3, 3), groups=2)
    assert torch.equal(m[1].weight.detach(), expected)
    grouped = nn.Conv2d(4, 6, 3, groups=2)  # groups defaults to the conv's own: 6 % 2 == 0
    wi.initialize(grouped, dict(type="Dirac", layer="Conv2d"))
    assert torch.equal(grouped.weight.detach(), nn.init.dirac_(torch.empty(6, 2, 3, 3), groups=2))


# ------------------------------------------------------------------ type must be an initializer


@pytest.fixture
def registry_names():
    """Names registered by a test are removed afterwards."""
    added: list[str] = []
    yield added
    for name in added:
        wi.WEIGHT_INITIALIZERS.module_dict.pop(name, None)


def test_type_nn_module_class_is_refused():
    m = eager()
    expect(m, dict(type=nn.Linear, layer="Linear"), wi.InitTypeError,
           r"<root> \(Sequential\) init_cfg: type=Linear is not a weight initializer: Linear is "
           r"an nn\.Module \(a layer to initialize, not a rule\)\. Fix: .*"
           r"@WEIGHT_INITIALIZERS\.register_module\(\)")
    expect_plan(m, dict(type=nn.Linear), wi.InitTypeError, r"type=Linear is not a weight")
    with pytest.raises(TypeError):  # MMEngine-compatible base class
        wi.initialize(m, dict(type=nn.Conv2d))


def test_type_base_init_is_refused():
    m = eager()
    expect(m, dict(type=BaseInit, layer="Linear"), wi.InitTypeError,
           r"type=BaseInit is not a weight initializer: BaseInit is the abstract base class")
    expect_plan(m, dict(type=BaseInit, layer="Linear"), wi.InitTypeError, r"type=BaseInit")


def test_registered_module_class_is_refused(registry_names):
    wi.WEIGHT_INITIALIZERS.register_module(name="_LinearAsInit", module=nn.Linear)
    registry_names.append("_LinearAsInit")
    expect(eager(), dict(type="_LinearAsInit", in_features=2, out_features=2), wi.InitTypeError,
           r"type='_LinearAsInit' is not a weight initializer: Linear is an nn\.Module")


def test_base_init_subclass_without_a_fill_is_refused():
    class Empty(BaseInit):
        pass

    expect(eager(), dict(type=Empty, layer="Linear"), wi.InitTypeError,
           r"type=.*Empty is not a weight initializer: Empty derives from BaseInit but "
           r"implements neither init_weight nor weight_dist")


def test_unregistered_plain_class_or_function_is_refused():
    class Plain:
        def __call__(self, module):
            module.weight.data.fill_(1)

    def factory():
        return Plain()

    m = eager()
    expect(m, dict(type=Plain), wi.InitTypeError,
           r"type=.*Plain is not a weight initializer: Plain neither derives from BaseInit nor "
           r"is registered in WEIGHT_INITIALIZERS")
    expect(m, dict(type=factory), wi.InitTypeError,
           r"factory is a function that is not registered in WEIGHT_INITIALIZERS")


def test_registered_class_must_be_callable(registry_names):
    @wi.WEIGHT_INITIALIZERS.register_module(name="_NotCallable")
    class NotCallable:
        pass

    registry_names.append("_NotCallable")
    expect(eager(), dict(type="_NotCallable"), wi.InitTypeError,
           r"type='_NotCallable' is not a weight initializer: instances of NotCallable are not "
           r"callable")


def test_registered_function_must_build_a_callable(registry_names):
    @wi.WEIGHT_INITIALIZERS.register_module(name="_Three")
    def three():
        return 3

    registry_names.append("_Three")
    expect(eager(), dict(type="_Three"), wi.InitTypeError,
           r"type='_Three' built a int, which is not callable: not a weight initializer")


def test_valid_initializer_types_still_work(registry_names):
    class Half(BaseInit):  # a BaseInit subclass passed directly: fine
        def init_weight(self, tensor):
            tensor.fill_(0.5)

    m = eager()
    wi.initialize(m, dict(type=Half, layer="Linear", bias=2))
    assert torch.equal(m[0].weight.detach(), torch.full((4, 4), 0.5))
    assert torch.equal(m[0].bias.detach(), torch.full((4,), 2.0))

    @wi.WEIGHT_INITIALIZERS.register_module(name="_MMEngineStyle")
    class MMEngineStyle:  # MMEngine-style: registered, only __call__
        def __init__(self, val=3.0):
            self.val = val

        def __call__(self, module):
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.constant_(sub.weight, self.val)

    registry_names.append("_MMEngineStyle")
    wi.initialize(m, dict(type="_MMEngineStyle", val=4.0))
    assert torch.equal(m[0].weight.detach(), torch.full((4, 4), 4.0))

    @wi.WEIGHT_INITIALIZERS.register_module(name="_Factory")
    def make(val=5.0):
        return MMEngineStyle(val)

    registry_names.append("_Factory")
    wi.initialize(m, dict(type="_Factory", val=6.0))
    assert torch.equal(m[0].weight.detach(), torch.full((4, 4), 6.0))


# ------------------------------------------------------------------ positive controls


def test_valid_configs_write_exact_values():
    m = lazy()
    wi.initialize(m, [dict(type="Normal", layer="Linear", mean=3.0, std=0, bias=-1.5),
                      dict(type="Constant", layer="Conv2d", val=1e38, bias=-1e38)])
    assert torch.equal(m[0].weight, torch.full((4, 4), 3.0))
    assert torch.equal(m[0].bias, torch.full((4,), -1.5))
    assert torch.equal(m[1].weight, torch.full((4, 4, 3, 3), 1e38))
    assert torch.equal(m[1].bias, torch.full((4,), -1e38))
    m = eager()
    wi.initialize(m, dict(type="Uniform", layer="Linear", a=-0.25, b=0.25))
    w = m[0].weight.detach()
    assert w.min() >= -0.25 and w.max() < 0.25 and w.std() > 0
    m = eager()
    wi.initialize(m, dict(type="Kaiming", layer="Linear", a=-0.5, nonlinearity="leaky_relu",
                          mode="fan_in"))
    assert torch.isfinite(m[0].weight).all() and m[0].weight.std() > 0
    assert math.isclose(wi.KaimingInit(a=-0.5, nonlinearity="leaky_relu").weight_std(
        (4, 4)), math.sqrt(2 / 1.25) / 2, rel_tol=1e-12)


# ------------------------------------------------------------------ LSUV: data-driven failures


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def lazy_mlp() -> nn.Sequential:
    with wi.deferred():
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def boom():
    raise ValueError("boom")


LSUV = [
    (dict(type="LSUV", data=lambda: [1.0, 2.0]),
     r"LSUV: data\(\) returned a list, not a tensor\. Fix: make data return", False),
    (dict(type="LSUV", data=boom), r"LSUV: data\(\) raised ValueError: boom\. Fix:", True),
    (dict(type="LSUV", input_shape=(16, 5)),
     r"LSUV: the forward pass of Sequential on the batch \(shape \(16, 5\), float32, from "
     r"input_shape=\(16, 5\)\) raised RuntimeError: .*Fix: give input_shape/data", True),
    (dict(type="LSUV", data=torch.ones(16, 8, dtype=torch.long)),
     r"LSUV: the forward pass of Sequential on the batch \(shape \(16, 8\), int64, from data\) "
     r"raised RuntimeError", True),
    (dict(type="LSUV", data=torch.zeros(16, 8)),
     r"LSUV: the output of 0 \(Linear\) has std 0\.0 on the batch, so it cannot be scaled to "
     r"unit variance\. Fix: check the batch \(constant or all-zero data\?\)", False),
]


@pytest.mark.parametrize("cfg,match,chained", LSUV, ids=[str(i) for i in range(len(LSUV))])
def test_lsuv_failure_is_an_lsuv_error_and_the_model_is_restored(cfg, match, chained):
    m = mlp()
    before = snapshot(m)
    with pytest.raises(wi.LSUVError, match=match) as info:
        wi.initialize(m, cfg)
    assert isinstance(info.value.__cause__, Exception) is chained
    assert_untouched(m, before)
    d = lazy_mlp()
    with pytest.raises(wi.LSUVError, match=match):
        wi.initialize(d, cfg)
    assert_all_meta(d)


def test_lsuv_valid_data_still_works():
    m = mlp()
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    wi.initialize(m, dict(type="LSUV", data=lambda: x, tol=0.05))
    with torch.no_grad():
        out = m[0](x)
    assert abs(out.std().item() - 1) <= 0.05
