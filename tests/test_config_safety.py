"""YAML and JSON configs are data: a dotted ``type`` may only name torch.nn, registered models,
``FILE.py:NAME`` and modules next to the config, and modules the user allows. ``.py`` configs
are code and may name anything."""

from __future__ import annotations

import io
import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch.nn as nn

import weightinit as wi
from weightinit import load_config
from weightinit.cli import main
from weightinit.errors import ConfigError

FIX = "or use a .py config"


def write_config(path: Path, data: dict) -> Path:
    """``data`` as YAML (flow style: JSON is YAML) or JSON, by the suffix of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def refusal(path: Path, allowed: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, allowed_modules=allowed).build()
    return str(info.value)


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / f"pwned-{uuid.uuid4().hex}"
    yield path
    assert not path.exists(), "the config ran a command"


def command_spec(type_: str, marker: Path) -> dict:
    if type_ == "subprocess.call":
        return {"type": type_, "args": ["touch", str(marker)]}
    if type_ == "builtins.eval":
        return {"type": type_, "source": f"open({str(marker)!r}, 'w')"}
    return {"type": type_, "command": f"touch {marker}"}


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
@pytest.mark.parametrize("type_", ["os.system", "subprocess.call", "builtins.eval", "posix.system"])
def test_a_data_config_cannot_name_any_callable(tmp_path, marker, suffix, type_):
    path = write_config(tmp_path / f"c{suffix}", {"model": command_spec(type_, marker)})
    msg = refusal(path)
    top = type_.split(".")[0]
    assert msg.startswith(f"c{suffix}: model.type: {type_!r} is not allowed in a ")
    assert f"Fix: add --allow-module {top}, {FIX}" in msg
    assert "\n" not in msg


def test_the_check_runs_before_the_module_is_imported(tmp_path, marker, monkeypatch):
    lib = tmp_path / "elsewhere"
    lib.mkdir()
    name = f"evil_{uuid.uuid4().hex[:8]}"
    (lib / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\nNet = dict\n")
    monkeypatch.syspath_prepend(str(lib))
    path = write_config(tmp_path / "cfg" / "c.yaml", {"model": {"type": f"{name}.Net"}})
    assert f"--allow-module {name}, {FIX}" in refusal(path)
    assert name not in sys.modules


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_nested_types_are_checked_and_named_by_their_key(tmp_path, marker, suffix):
    path = write_config(tmp_path / f"a{suffix}", {"model": {
        "type": "torch.nn.Sequential",
        "args": [{"type": "torch.nn.ReLU"}, command_spec("os.system", marker)]}})
    assert refusal(path).startswith(f"a{suffix}: model.args[1].type: 'os.system' is not allowed")
    path = write_config(tmp_path / f"b{suffix}", {"model": {
        "type": "torch.nn.TransformerEncoder", "num_layers": 1,
        "encoder_layer": {"type": "torch.nn.TransformerEncoderLayer", "d_model": 4, "nhead": 1,
                          "norm": command_spec("subprocess.call", marker)}}})
    assert refusal(path).startswith(
        f"b{suffix}: model.encoder_layer.norm.type: 'subprocess.call' is not allowed")


def test_an_allowed_module_does_not_lead_on_to_others(tmp_path):
    path = write_config(tmp_path / "c.yaml",
                        {"model": {"type": "torch.nn.modules.module.torch.load", "f": "x"}})
    assert "(it reaches torch) is not allowed" in refusal(path)
    path = write_config(tmp_path / "d.yaml",
                        {"model": {"type": "torch.nn.Module.__init__.__globals__"}})
    assert "is not allowed" in refusal(path)


def test_a_module_next_to_the_config_cannot_shadow_a_loaded_one(tmp_path, marker):
    (tmp_path / "os.py").write_text("system = print\n")
    path = write_config(tmp_path / "c.json", {"model": command_spec("os.system", marker)})
    assert "--allow-module os" in refusal(path)


def test_torch_nn_registered_names_and_files_next_to_the_config_still_build(tmp_path):
    path = write_config(tmp_path / "a.yaml", {"model": {
        "type": "torch.nn.Sequential",
        "args": [{"type": "torch.nn.Linear", "in_features": 2, "out_features": 3}]}})
    assert isinstance(load_config(path).build()[0], nn.Linear)

    @wi.MODELS.register_module(name="SafetyTestNet")
    class SafetyTestNet(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(width, width)

    try:
        path = write_config(tmp_path / "b.json", {"model": {"type": "SafetyTestNet", "width": 2}})
        assert load_config(path).build().fc.weight.shape == (2, 2)
    finally:
        wi.MODELS.module_dict.pop("SafetyTestNet")

    (tmp_path / "nets.py").write_text("import torch.nn as nn\n\ndef tiny(w):\n"
                                      "    return nn.Linear(w, w)\n")
    path = write_config(tmp_path / "c.yaml", {"model": {"type": "nets.py:tiny", "w": 4}})
    assert load_config(path).build().weight.shape == (4, 4)


def test_allowed_modules(tmp_path, monkeypatch):
    spec = {"model": {"type": "torch.nn.Sequential", "args": [
        {"type": "collections.OrderedDict",
         "fc": {"type": "torch.nn.Linear", "in_features": 2, "out_features": 2}}]}}
    path = write_config(tmp_path / "c.yaml", spec)
    msg = refusal(path)
    assert msg.startswith("c.yaml: model.args[0].type: 'collections.OrderedDict' is not allowed")
    assert f"Fix: add --allow-module collections, {FIX}" in msg
    assert isinstance(load_config(path, allowed_modules=["collections"]).build().fc, nn.Linear)

    lib = tmp_path / "lib"
    (lib / "mypkg").mkdir(parents=True)
    (lib / "mypkg" / "__init__.py").write_text("")
    (lib / "mypkg" / "sub.py").write_text("import torch.nn as nn\n\nclass Net(nn.Linear):\n"
                                          "    pass\n")
    monkeypatch.syspath_prepend(str(lib))
    path = write_config(tmp_path / "d.json", {"model": {"type": "mypkg.sub.Net",
                                                        "in_features": 1, "out_features": 1}})
    assert "--allow-module mypkg" in refusal(path)
    assert "mypkg" not in sys.modules
    for allowed in (["mypkg"], ["mypkg.sub"]):
        assert load_config(path, allowed_modules=allowed).build().weight.shape == (1, 1)
    assert "--allow-module mypkg" in refusal(path, ["mypkg.other"])
    for name in [n for n in sys.modules if n == "mypkg" or n.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, name)

    with pytest.raises(ConfigError, match="allowed module 'os.\\*' is not a dotted module name"):
        load_config(path, allowed_modules=["os.*"])


def test_python_configs_may_name_anything(tmp_path):
    # A .py config is code by nature: the same dotted paths are not refused. (os.system is not
    # run here; a harmless function outside torch.nn shows that nothing is checked.)
    path = tmp_path / "c.py"
    path.write_text(textwrap.dedent("""
        model = dict(type="torch.nn.Sequential", args=[
            dict(type="collections.OrderedDict",
                 fc=dict(type="torch.nn.Linear", in_features=2, out_features=2))])
        """))
    assert isinstance(load_config(path).build().fc, nn.Linear)
    path.write_text('model = dict(type="json.dumps", obj=[1])\n')
    with pytest.raises(ConfigError, match="c.py: model: building it gave a str, not a "):
        load_config(path).build()


def cli(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_refuses_with_one_line_and_allow_module_lets_it_proceed(tmp_path, marker):
    path = write_config(tmp_path / "c.yaml", {"model": command_spec("os.system", marker)})
    rc, out, err = cli("plan", path)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("weightinit: error: c.yaml: model.type: ")
    assert f"Fix: add --allow-module os, {FIX}" in err

    path = write_config(tmp_path / "d.yaml", {"model": {"type": "torch.nn.Sequential", "args": [
        {"type": "collections.OrderedDict",
         "fc": {"type": "torch.nn.Linear", "in_features": 2, "out_features": 2}}]}})
    rc, _, err = cli("plan", path)
    assert rc == 2 and err.count("\n") == 1 and "model.args[0].type" in err
    rc, out, err = cli("plan", path, "--allow-module", "collections", "--allow-module", "math")
    assert (rc, err) == (0, ""), err
    assert "fc.weight" in out
