"""SPEC B7: config files (Python, YAML, JSON) that build a model and say how to initialize it."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.configfile import (
    ConfigBuildError,
    ConfigError,
    ConfigNotFoundError,
    UnknownModelTypeError,
    build_object,
    load_config,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"

MLP = dict(type="torch.nn.Sequential", args=[
    dict(type="torch.nn.Linear", in_features=4, out_features=8), dict(type="torch.nn.ReLU"),
    dict(type="torch.nn.Linear", in_features=8, out_features=2)])
RULES = [dict(type="Constant", layer="Linear", val=0.5, bias=0.25)]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def configs(tmp_path):
    """The same config as Python, YAML and JSON."""
    py = write(tmp_path / "mlp.py", f"""
        model = {MLP!r}
        init_cfg = {RULES!r}
        input = dict(shape=[2, 4])
        helper_value = 3  # other module-level names are helpers
        """)
    yml = write(tmp_path / "mlp.yaml", f"""
        model: {json.dumps(MLP)}
        init_cfg: {json.dumps(RULES)}
        input: {{shape: [2, 4]}}
        """)
    js = tmp_path / "mlp.json"
    js.write_text(json.dumps(dict(model=MLP, init_cfg=RULES, input=dict(shape=[2, 4]))))
    return [py, yml, js]


def test_python_yaml_and_json_configs_build_the_same_model(configs):
    for path in configs:
        cfg = load_config(path)
        assert cfg.name == "mlp" and cfg.input.shape == (2, 4) and cfg.input.dtype == "float"
        model = cfg.build()
        assert isinstance(model, nn.Sequential)
        assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear"]
        assert model[0].weight.is_meta  # deferred by default
        record = cfg.initialize(model)
        assert not model[0].weight.is_meta
        assert torch.all(model[2].weight == 0.5) and torch.all(model[2].bias == 0.25)
        assert record["0.weight"].declared_in == "<root> (Sequential) init_cfg[0]"


def test_eager_build(configs):
    model = load_config(configs[0]).build(deferred=False)
    assert not model[0].weight.is_meta


def test_file_reference_relative_to_the_config(tmp_path):
    (tmp_path / "lib").mkdir()
    write(tmp_path / "lib" / "nets.py", """
        import torch.nn as nn

        def tiny(width=3):
            return nn.Sequential(nn.Linear(width, width))
        """)
    (tmp_path / "cfg").mkdir()
    path = write(tmp_path / "cfg" / "c.yaml", """
        model: {type: ../lib/nets.py:tiny, width: 5}
        """)
    model = load_config(path).build()
    assert model[0].weight.shape == (5, 5)
    with pytest.raises(UnknownModelTypeError, match=r"c.yaml: model.type: ../lib/nets.py has no "
                                                    r"'tinny'. Did you mean 'tiny'\?"):
        load_config(path, ["model.type='../lib/nets.py:tinny'"]).build()
    with pytest.raises(ConfigNotFoundError, match="c.yaml: model.type: no such file"):
        load_config(path, ["model.type='../lib/gone.py:tiny'"]).build()


def test_the_configs_directory_is_importable(tmp_path):
    write(tmp_path / "mynets.py", """
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.fc = nn.Linear(d, d)
        """)
    path = write(tmp_path / "c.json", '{"model": {"type": "mynets.Net", "d": 3}}')
    assert load_config(path).build().fc.weight.shape == (3, 3)
    assert str(tmp_path) not in sys.path
    sys.modules.pop("mynets", None)


def test_registered_models_and_callables_in_python_configs(tmp_path):
    @wi.MODELS.register_module(name="CfgTestNet")
    class CfgTestNet(wi.BaseModule):
        def __init__(self, width, init_cfg=None):
            super().__init__(init_cfg)
            self.fc = nn.Linear(width, width)

    try:
        path = write(tmp_path / "c.py", """
            model = dict(type="CfgTestNet", width=4,
                         init_cfg=dict(type="Constant", layer="Linear", val=2))
            """)
        cfg = load_config(path)
        model = cfg.build()
        assert isinstance(model, CfgTestNet) and model.init_cfg["val"] == 2
        cfg.initialize(model)
        assert torch.all(model.fc.weight == 2)
        path = write(tmp_path / "d.py", """
            import torch.nn as nn
            model = dict(type=nn.Linear, in_features=2, out_features=3)
            """)
        assert load_config(path).build(deferred=False).weight.shape == (3, 2)
    finally:
        wi.MODELS.module_dict.pop("CfgTestNet")


def test_top_level_init_cfg_replaces_a_base_modules_root_rules(tmp_path):
    (tmp_path / "models.py").write_text((ROOT / "examples" / "models.py").read_text())
    path = write(tmp_path / "c.yaml", """
        model: {type: models.py:vit_b16, depth: 1, num_classes: 10}
        init_cfg:
          - {type: Zeros, layer: Linear}
          - {type: Ones, param: [cls_token, pos_embed]}
        """)
    cfg = load_config(path)
    model = cfg.build()
    assert model.init_cfg == cfg.init_cfg
    cfg.initialize(model)
    assert torch.all(model.head.weight == 0) and torch.all(model.cls_token == 1)
    # Its own Kaiming rule for the patch embedding was replaced: the PyTorch default is left.
    assert model.init_record["patch_embed.weight"].kind == "unchanged"


class OwnInit(wi.BaseModule):
    """A BaseModule whose own init_weights takes no device/dtype."""

    def __init__(self):
        super().__init__(dict(type="Constant", layer="Linear", val=2))
        self.fc = nn.Linear(3, 3)

    def init_weights(self):
        super().init_weights()
        nn.init.zeros_(self.fc.bias)


def test_a_base_module_with_its_own_init_weights(tmp_path):
    path = write(tmp_path / "c.yaml", "model: {type: test_configfile.OwnInit}\n")
    cfg = load_config(path, allowed_modules=["test_configfile"])  # a YAML config: allow it
    for deferred in (True, False):
        model = cfg.build(deferred=deferred)
        record = cfg.initialize(model, device="cpu", dtype=torch.float64)
        assert model.fc.weight.dtype == torch.float64
        assert torch.all(model.fc.weight == 2) and torch.all(model.fc.bias == 0)
        assert record["fc.weight"].info == "ConstantInit: val=2, bias=0"


def test_init_cfg_inside_model_of_a_foreign_class_becomes_top_level(tmp_path):
    path = write(tmp_path / "c.yaml", """
        model:
          type: torch.nn.Linear
          in_features: 3
          out_features: 3
          init_cfg: {type: Constant, layer: Linear, val: 3}
        """)
    cfg = load_config(path)
    model = cfg.build()
    assert cfg.init_cfg == {"type": "Constant", "layer": "Linear", "val": 3}
    cfg.initialize(model)
    assert torch.all(model.weight == 3)
    assert isinstance(cfg.build(), torch.nn.Linear)  # building again is fine
    path = write(tmp_path / "d.yaml", """
        model: {type: torch.nn.Linear, in_features: 3, out_features: 3,
                init_cfg: {type: Zeros, layer: Linear}}
        init_cfg: {type: Ones, layer: Linear}
        """)
    with pytest.raises(ConfigError, match="d.yaml: model: init_cfg is given both inside model "
                                          "and at the top level"):
        load_config(path).build()


def test_nested_specs_are_built_and_unresolved_sub_configs_passed_as_data():
    class Holder(nn.Module):
        def __init__(self, layer, norm_cfg, layers=()):
            super().__init__()
            self.layer, self.norm_cfg, self.layers = layer, norm_cfg, nn.ModuleList(layers)

    h = build_object(dict(type=Holder, layer=dict(type="torch.nn.Linear", in_features=2,
                                                  out_features=2),
                          norm_cfg=dict(type="BN", requires_grad=True),
                          layers=[dict(type="torch.nn.ReLU"), dict(type="torch.nn.Tanh")]))
    assert isinstance(h.layer, nn.Linear)
    assert h.norm_cfg == {"type": "BN", "requires_grad": True}
    assert [type(m).__name__ for m in h.layers] == ["ReLU", "Tanh"]
    with pytest.raises(UnknownModelTypeError, match="model.layer.type: torch.nn has no attribute "
                                                    "'Linaer'. Did you mean 'torch.nn.Linear'"):
        build_object(dict(type=Holder, layer=dict(type="torch.nn.Linaer"), norm_cfg=None))


def test_overrides(configs):
    cfg = load_config(configs[1], ["input.shape=[3, 4]", "model.args[0]=1", "seed=7",
                                   "device=cpu"])
    assert cfg.input.shape == (3, 4) and cfg.seed == 7 and cfg.device == "cpu"
    cfg = load_config(configs[1], ["input.dtype=long", "input.high=10"])
    assert (cfg.input.dtype, cfg.input.high) == ("long", 10)
    with pytest.raises(ConfigError, match=r"mlp.yaml: bad override 'seed'. Fix: write KEY=VALUE"):
        load_config(configs[1], ["seed"])


def test_bundled_configs_load():
    for name in ("resnet50.py", "vit_b16.py", "llama.yaml", "mlp_kaiming.py", "mlp_std1.py",
                 "mlp_default.py", "transformer_encoder.json"):
        cfg = load_config(CONFIGS / name)
        assert cfg.input is not None and cfg.seed == 0, name
    llama = load_config(CONFIGS / "llama.yaml", ["model.size=tiny"])
    assert (llama.dtype, llama.torch_dtype) == ("bfloat16", torch.bfloat16)
    assert llama.input.dtype == "long"
    model = llama.build()
    assert sum(p.numel() for p in model.parameters()) == 2 * 1000 * 64 + 2 * (
        64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 176 + 2 * 64) + 64


# ------------------------------------------------------------------ mistakes


def error_of(path, overrides=None, build=True) -> str:
    with pytest.raises(wi.InitError) as info:
        cfg = load_config(path, overrides)
        if build:
            cfg.build()
    return str(info.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ConfigNotFoundError) as info:
        load_config(tmp_path / "nope.py")
    assert isinstance(info.value, FileNotFoundError)
    assert str(info.value) == f"{tmp_path / 'nope.py'}: no such file. Fix: give the path of a " \
                              "config file."
    (tmp_path / "c.toml").write_text("")
    assert error_of(tmp_path / "c.toml") == ("c.toml: unsupported config type '.toml'. Fix: use "
                                             "a .py, .yaml, .yml or .json file.")
    (tmp_path / "d.py").mkdir()
    assert error_of(tmp_path / "d.py").endswith("d.py: is a directory. Fix: give the path of a "
                                                "config file.")


def test_syntax_and_format_errors_name_the_line(tmp_path):
    assert error_of(write(tmp_path / "a.py", "model = dict(\n  type='x',,\n)\n")) == \
        "a.py: line 2: syntax error: invalid syntax"
    assert error_of(write(tmp_path / "b.py", "x = 1\nmodel = dict(type=undefined_name)\n")) == \
        "b.py: line 2: running the config raised NameError: name 'undefined_name' is not defined"
    assert error_of(write(tmp_path / "c.yaml", "model:\n  type: [unclosed\n")).startswith(
        "c.yaml: line 3: invalid YAML:")
    assert error_of(write(tmp_path / "d.json", '{"model": {"type": "x",}}')) == \
        "d.json: line 1: invalid JSON: Expecting property name enclosed in double quotes"
    assert error_of(write(tmp_path / "e.json", "[1, 2]")) == \
        "e.json: the file must hold a mapping with a 'model' key, got list"


def test_unknown_and_missing_keys(tmp_path):
    assert error_of(write(tmp_path / "a.yaml", "model: {type: torch.nn.ReLU}\ninit_cgf: {}\n")) \
        == ("a.yaml: unknown key 'init_cgf'. Did you mean 'init_cfg'? Known keys: model, "
            "init_cfg, input, input_shape, device, dtype, seed.")
    assert error_of(write(tmp_path / "b.py", "model = dict(type='torch.nn.ReLU')\nseeds = 1\n")) \
        == "b.py: unknown key 'seeds'. Did you mean 'seed'?"
    assert error_of(write(tmp_path / "c.py", "modle = dict(type='torch.nn.ReLU')\n")) == \
        "c.py: unknown key 'modle'. Did you mean 'model'?"
    assert error_of(write(tmp_path / "d.json", '{"seed": 1}')) == \
        "d.json: no 'model' key. Fix: define model = dict(type=..., ...)."
    assert error_of(write(tmp_path / "e.json", '{"model": {"in_features": 1}}')).startswith(
        "e.json: model: no 'type' key.")
    assert error_of(write(tmp_path / "f.json", '{"model": {"type": "torch.nn.ReLU"}, '
                                               '"input": {"shape": [0, 2]}}')) == \
        "f.json: input.shape: shape must be a list of positive ints, got [0, 2]"
    assert error_of(write(tmp_path / "g.json", '{"model": {"type": "torch.nn.ReLU"}, '
                                               '"input": {"shape": [2], "high": 0}}')) == \
        "g.json: input.high: must be a positive int (token ids are drawn from [0, high)), got 0"
    assert error_of(write(tmp_path / "h.json", '{"model": {"type": "torch.nn.ReLU"}, '
                                               '"dtype": "bfloat61"}')) == \
        ("h.json: dtype: unknown dtype 'bfloat61'. Did you mean 'bfloat16'? Known: float32, "
         "float, float16, half, bfloat16, float64, double.")


def test_unknown_types_suggest_close_names(tmp_path):
    path = write(tmp_path / "a.yaml", "model: {type: Linear, in_features: 2, out_features: 2}\n")
    with pytest.raises(UnknownModelTypeError) as info:
        load_config(path).build()
    assert isinstance(info.value, KeyError) and isinstance(info.value, wi.UnknownTypeError)
    assert str(info.value).startswith("a.yaml: model.type: 'Linear' is not a registered model and "
                                      "not an import path. Did you mean 'torch.nn.Linear'?")
    assert error_of(path, ["model.type=torch.nn.Linaer"]).startswith(
        "a.yaml: model.type: torch.nn has no attribute 'Linaer'. Did you mean 'torch.nn.Linear'")
    # a YAML config may not name modules outside torch.nn (tests/test_config_safety.py): a .py one
    py = write(tmp_path / "b.py", "model = dict(type='torch.nn.ReLU')\n")
    assert error_of(py, ["model.type=nosuchpkg.Net"]).startswith(
        "b.py: model.type: cannot import 'nosuchpkg.Net': no module named 'nosuchpkg'.")
    assert error_of(py, ["model.type=torch.pi"]) == \
        "b.py: model.type: 'torch.pi' is a float, not a class or function"


def test_bad_constructor_arguments(tmp_path):
    path = write(tmp_path / "a.yaml", "model: {type: torch.nn.Linear, in_feature: 2, "
                                      "out_features: 2}\n")
    msg = error_of(path)
    assert msg.startswith("a.yaml: model: bad arguments for torch.nn.modules.linear.Linear: ")
    assert "Did you mean 'in_features'?" in msg
    path = write(tmp_path / "b.yaml", "model: {type: models.py:llama, size: huge}\n")
    (tmp_path / "models.py").write_text((ROOT / "examples" / "models.py").read_text())
    with pytest.raises(ConfigBuildError) as info:
        load_config(path).build()
    assert str(info.value) == "b.yaml: model: building llama raised KeyError: 'huge'"
    path = write(tmp_path / "c.yaml", "model: {type: torch.nn.Sequential, args: 3}\n")
    assert error_of(path) == ("c.yaml: model.args: must be a list (the positional arguments of "
                              "torch.nn.modules.container.Sequential), got int")
    path = write(tmp_path / "e.yaml", "model: {type: torch.nn.functional.relu}\n")
    assert error_of(path).startswith("e.yaml: model: bad arguments for torch.nn.functional.relu")
    path = write(tmp_path / "f.py", "model = dict(type='torch.zeros', size=[2])\n")
    assert error_of(path) == "f.py: model: building it gave a Tensor, not a torch.nn.Module"


def test_yaml_without_pyyaml_is_a_clear_error(tmp_path, monkeypatch):
    path = write(tmp_path / "a.yaml", "model: {type: torch.nn.ReLU}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert error_of(path) == ("a.yaml: reading YAML needs PyYAML, which is not installed. Fix: "
                              "pip install 'weightinit[yaml]' (or pyyaml).")
