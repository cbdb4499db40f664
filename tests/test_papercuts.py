"""Papercuts a new user hit: --device errors, list overrides, the health criterion on a
shallow conv net, custom rule arguments in the record, the two glob dialects' messages."""

from __future__ import annotations

import io
import textwrap

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.cli import main
from weightinit.configfile import load_config
from weightinit.errors import ConfigError
from weightinit.health import check_health, random_input


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(textwrap.dedent("""
        model:
          type: torch.nn.Sequential
          args:
            - {type: torch.nn.Linear, in_features: 4, out_features: 4}
        init_cfg:
          - {type: Kaiming, layer: Linear}
          - {type: Constant, val: 1, layer: Linear}
        input: {shape: [2, 4]}
        """))
    return path


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    rc = main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, err.getvalue()


# ------------------------------------------------------------------ 1. --device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_one_line_exit_2(small, tmp_path, device):
    rc, err = _cli("init", small, "--out", tmp_path / "m.pt", "--device", device)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"weightinit: error: device {device!r} is not usable here: ")
    assert "Fix: pass --device cpu" in err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_from_the_config_names_the_key(small):
    rc, err = _cli("check", small, "--set", "device=cuda")
    assert rc == 2 and err.count("\n") == 1
    assert "(or change small.yaml: device)" in err


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "", "mps:abc"])
def test_nonsense_device_is_one_line_exit_2(small, tmp_path, device):
    rc, err = _cli("init", small, "--out", tmp_path / "m.pt", "--device", device or "??")
    assert rc == 2 and err.count("\n") == 1 and "Fix: pass --device cpu" in err
    assert len(err) < 300  # the first sentence of a backend error, not pages of it


# ------------------------------------------------------------------ 2. list overrides


def test_integer_segments_index_lists(small):
    cfg = load_config(small, ["init_cfg.0.type=Normal", "init_cfg.1.val=2",
                              "model.args.0.out_features=8", "init_cfg.-1.layer=Linear"])
    assert cfg.init_cfg[0] == {"type": "Normal", "layer": "Linear"}
    assert cfg.init_cfg[1]["val"] == 2 and cfg.model["args"][0]["out_features"] == 8
    cfg = load_config(small, ["init_cfg.1={'type': 'Zeros', 'layer': 'Linear'}"])
    assert cfg.init_cfg[1] == {"type": "Zeros", "layer": "Linear"}


def test_dict_overrides_unchanged(small):
    cfg = load_config(small, ["input.shape=[3, 4]", "new.key=1", "seed=3"])
    assert cfg.input.shape == (3, 4) and cfg.seed == 3


def test_list_index_errors_name_the_path_and_the_length(small):
    with pytest.raises(ConfigError, match=r"small.yaml: override 'init_cfg.5.type': index 5 is "
                                          r"out of range for init_cfg, a list of length 2"):
        load_config(small, ["init_cfg.5.type=Normal"])
    with pytest.raises(ConfigError, match=r"init_cfg is a list; index it with an integer, e.g. "
                                          r"init_cfg.0, not 'first'"):
        load_config(small, ["init_cfg.first.type=Normal"])
    with pytest.raises(ConfigError, match=r"init_cfg.0.type is not a mapping or a list"):
        load_config(small, ["init_cfg.0.type.x=1"])


def test_tuples_in_python_configs_are_indexed_too(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("model = dict(type='torch.nn.Linear', in_features=2, out_features=2)\n"
                    "init_cfg = (dict(type='Normal', layer='Linear'),)\n")
    assert load_config(path, ["init_cfg.0.std=0.5"]).init_cfg == [
        {"type": "Normal", "layer": "Linear", "std": 0.5}]


# ------------------------------------------------------------------ 3. health criterion


def _shallow_convnet() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    wi.initialize(model, [dict(type="Kaiming", layer="Conv2d", mode="fan_out",
                               nonlinearity="relu"),
                          dict(type="Constant", layer="BatchNorm2d", val=1, bias=0),
                          dict(type="Normal", layer="Linear", std=0.01)])
    return model


def test_standard_recipe_on_a_shallow_conv_net_passes():
    res = check_health(_shallow_convnet(), random_input([8, 3, 32, 32]))
    # The head and the pooling cut the per-element gradient ~1e4 in one step: not a trend.
    assert res.layers[-2].grad_std / res.layers[-1].grad_std < 1e-3
    assert not res.flagged, res.problems
    assert 0.1 < res.act_gain < 10 and 0.1 < res.grad_gain < 10


def test_deep_tanh_mlp_with_tiny_std_is_still_flagged():
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(20):
        layers += [nn.Linear(256, 256), nn.Tanh()]
    model = nn.Sequential(*layers)
    wi.initialize(model, dict(type="Normal", layer="Linear", std=0.01))
    res = check_health(model, random_input([64, 256]))
    assert [p.split(":")[0] for p in res.problems] == ["vanishing activations",
                                                       "vanishing gradients"]
    assert res.act_gain < 1e-10 and res.grad_gain < 1e-10


# ------------------------------------------------------------------ 4. custom rule args


class _Scaled(wi.BaseInit):
    def __init__(self, scale=1.0, mode="fan_in", **kwargs):
        self._cache = {}
        super().__init__(**kwargs)
        self.scale = scale
        self.mode = mode

    def init_weight(self, tensor):
        tensor.normal_(0, self.scale)


def test_custom_rule_args_default_to_its_constructor_attributes():
    rule = _Scaled(scale=0.5, bias=0.1, layer="Linear")
    assert rule.args() == {"scale": 0.5, "mode": "fan_in", "bias": 0.1}
    assert rule._get_init_info() == "_Scaled: scale=0.5, mode=fan_in, bias=0.1"
    assert repr(rule) == "_Scaled(scale=0.5, mode='fan_in', bias=0.1, layer=['Linear'])"
    record = wi.initialize(nn.Linear(3, 3), dict(type=_Scaled, scale=0.5, layer="Linear"))
    assert record["weight"].info == "_Scaled: scale=0.5, mode=fan_in, bias=0"


def test_arg_names_still_wins_and_builtins_keep_their_text():
    class Named(_Scaled):
        arg_names = ("mode",)

    assert Named(scale=2.0).args() == {"mode": "fan_in", "bias": 0}
    assert wi.ZerosInit().args() == {"bias": 0}  # no arg_names of its own: nothing extra
    assert wi.KaimingInit()._get_init_info() == (
        "KaimingInit: a=0, mode=fan_out, nonlinearity=relu, distribution=normal, bias=0")


# ------------------------------------------------------------------ 5. glob dialects


def test_glob_dialect_errors_say_which_applies():
    model = wi.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 2))
    with pytest.raises(wi.InitError, match=r"override names match segment by segment: '\*' is "
                                           r"one name, never a dot"):
        wi.initialize(model, dict(type="Normal", override=dict(name="*.*.*")))
    with pytest.raises(wi.InitError, match=r"param patterns match the whole dotted name: '\*' "
                                           r"matches any characters, dots included"):
        wi.initialize(model, dict(type="Normal", param="*.gamma"))
    # The matching itself is unchanged: '*' is one name for overrides, crosses dots for params.
    record = wi.initialize(model, [dict(type="Constant", val=2, override=dict(name="*.0")),
                                   dict(type="Constant", val=3, param="*0.bias")])
    assert record["0.0.weight"].info.startswith("ConstantInit: val=2")
    assert record["0.0.bias"].info.startswith("ConstantInit: val=3")
    assert record["1.weight"].info.startswith("PyTorch default") or \
        record["1.weight"].kind == "unchanged"
