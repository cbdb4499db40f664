"""Papercuts a new user hit, second round: plan downloads nothing, ModelConfig.initialize is
seeded like the command, a model's own init is not "PyTorch default", config paths are
relative to the config, outputs are checked before the work, py.typed ships, --summary
measures on samples, long steps count tensors with a time remaining."""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from glob import glob
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import weightinit as wi
from weightinit.checkpoint.sources import cached_path
from weightinit.cli import main
from weightinit.cli.output import Output, parameter_slots, progress_bar, watch_writes
from weightinit.configfile import load_config
from weightinit.errors import ConfigNotFoundError
from weightinit.report import SUMMARY_SAMPLE, build_report

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv, stderr: io.StringIO | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), stderr or io.StringIO()
    rc = main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def checkpoint_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "src.safetensors"
    save_file({"0.weight": torch.full((4, 4), 0.5), "0.bias": torch.zeros(4)}, str(path))
    return path.read_bytes()


# ------------------------------------------------------------------ 1. plan never downloads


class Server:
    """A checkpoint on 127.0.0.1 that counts the GET and HEAD requests it answers."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.gets = self.heads = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _headers(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
                server.heads += 1
                self._headers()

            def do_GET(self) -> None:  # noqa: N802
                server.gets += 1
                self._headers()
                self.wfile.write(server.body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/w.safetensors"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[Server]:
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(tmp_path / "cache"))
    srv = Server(checkpoint_bytes(tmp_path))
    yield srv
    srv.close()


def pretrained_config(tmp_path: Path, checkpoint: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(f"""
        model:
          type: torch.nn.Sequential
          args:
            - {{type: torch.nn.Linear, in_features: 4, out_features: 4}}
        init_cfg:
          - {{type: Pretrained, checkpoint: "{checkpoint}"}}
        """))
    return path


def test_plan_makes_no_get_and_says_download_pending_with_the_size(server, tmp_path):
    rc, out, err = cli("plan", pretrained_config(tmp_path, server.url))
    assert (rc, err) == (0, "")
    assert server.gets == 0 and server.heads == 1
    size = len(server.body)
    assert f"checkpoint {server.url}: download pending ({size:,} bytes); its keys are not " \
           "checked: assumed to load all 2 tensors of <root> (Sequential)" in out
    row = next(line for line in out.splitlines() if "│ 0.weight" in line)
    assert "Pretrained(" in row and "download pending" in row
    assert not cached_path(server.url).exists()
    # init still downloads it, once
    rc, out, err = cli("init", pretrained_config(tmp_path, server.url),
                       "--out", tmp_path / "m.safetensors", "--summary")
    assert rc == 0, err
    assert server.gets == 1
    assert torch.equal(load_file(str(tmp_path / "m.safetensors"))["0.weight"],
                       torch.full((4, 4), 0.5))


def test_plan_with_the_server_down_still_plans(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(tmp_path / "cache"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.safetensors"
    rc, out, err = cli("plan", pretrained_config(tmp_path, url), "--timeout", "2")
    assert (rc, err) == (0, "")
    assert f"checkpoint {url}: download pending (size unknown: 127.0.0.1:{port} not reached:" \
        in out


def test_plan_reads_a_cached_copy_without_any_request(server, tmp_path):
    cached = cached_path(server.url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(server.body)
    rc, out, err = cli("plan", pretrained_config(tmp_path, server.url))
    assert (rc, err) == (0, "")
    assert (server.gets, server.heads) == (0, 0)
    assert f"checkpoint {server.url}: 2 loaded" in out and "pending" not in out


# ------------------------------------------------------------------ 2. ModelConfig.initialize seed


SEEDED = """
model = dict(type="torch.nn.Sequential", args=[
    dict(type="torch.nn.Linear", in_features=512, out_features=1024),
    dict(type="torch.nn.Linear", in_features=1024, out_features=512),
    dict(type="torch.nn.LayerNorm", normalized_shape=512)])
init_cfg = [dict(type="Normal", layer="Linear", std=0.02, bias=0.1)]  # the LayerNorm: default
seed = 5
"""

RUN_API = """
import sys
from safetensors.torch import save_file
from weightinit.configfile import load_config
cfg = load_config(sys.argv[1])
model = cfg.build()
cfg.initialize(model)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
"""


def test_model_config_initialize_uses_the_config_seed_like_the_command(tmp_path):
    config = tmp_path / "seeded.py"
    config.write_text(SEEDED)
    outs = []
    for i in range(2):
        outs.append(tmp_path / f"api{i}.safetensors")
        subprocess.run([sys.executable, "-c", RUN_API, str(config), str(outs[-1])], check=True,
                       cwd=tmp_path, timeout=300)
    rc, _, err = cli("init", config, "--out", tmp_path / "cli.safetensors", "--summary")
    assert rc == 0, err
    first, second, command = (load_file(str(p)) for p in (*outs, tmp_path / "cli.safetensors"))
    assert first.keys() == command.keys()
    for name in command:
        assert torch.equal(first[name], second[name]), name
        assert torch.equal(first[name], command[name]), name
    cfg = load_config(config)
    other = cfg.build()
    cfg.initialize(other, seed=6)  # an explicit seed wins
    assert not torch.equal(other[0].weight, first["0.weight"])
    with wi.seeded(5):
        assert cfg.run_seed() == 5
    assert cfg.run_seed(7) == 7


# ------------------------------------------------------------------ 3. the model's own init


def small_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("deferred", [True, False])
def test_hugging_face_init_is_named_and_not_warned_about(deferred):
    if deferred:
        with wi.deferred():
            model = small_llama()
    else:
        model = small_llama()
    report = build_report(model, wi.initialize(model, []))
    assert len(report) == 21 and report.at_default() == [] and report.warnings() == []
    row = report["model.layers.0.self_attn.q_proj.weight"]
    assert row.kind == "model"
    assert row.rule_text == "model's own init: LlamaPreTrainedModel._init_weights"
    assert [(c.rule, c.kind, c.parameters) for c in report.coverage()] == [
        ("model's own init: LlamaPreTrainedModel._init_weights", "model", 21)]
    assert report.to_dict()["parameters"][0]["kind"] == "model"


def test_plan_names_the_models_own_init_too(tmp_path):
    pytest.importorskip("transformers")
    config = tmp_path / "hf.py"
    config.write_text(textwrap.dedent("""
        import transformers

        def tiny_llama():
            return transformers.LlamaForCausalLM(transformers.LlamaConfig(
                vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2))

        model = dict(type=tiny_llama)
        """))
    for command in (["plan"], ["init", "--out", tmp_path / "m.safetensors"]):
        rc, out, err = cli(*command, config, "--summary")
        assert rc == 0, err
        assert "model's own init: LlamaPreTrainedModel._init_weights │ model │         21" in out
        assert "warning" not in out


class Scaled(nn.Module):
    """Defines its own reset_parameters: its values are the model's own init."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.empty(8))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gain, 0.5)


class Token(nn.Module):
    """Sets a parameter in its constructor, with no reset_parameters."""

    def __init__(self, fill: bool) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(8) if fill else torch.empty(8))
        if fill:
            nn.init.trunc_normal_(self.token, std=0.02)
        self.fc = nn.Linear(8, 8)


def test_own_reset_parameters_and_constructors_are_the_models_init():
    with wi.deferred():
        model = nn.Sequential(Scaled(), Token(fill=True))
    report = build_report(model, wi.initialize(model, []))
    assert report["0.gain"].rule_text == "model's own init: Scaled.reset_parameters"
    assert report["1.token"].rule_text == "model's own init: Token.__init__"
    assert [p.name for p in report.at_default()] == ["1.fc.weight", "1.fc.bias"]  # torch's
    # Built eagerly, torch.empty may be what the constructor left: still warned about.
    eager = nn.Sequential(Token(fill=False))
    report = build_report(eager, wi.initialize(eager, []))
    assert "0.token" in [p.name for p in report.at_default()]


# ------------------------------------------------------------------ 4. paths next to the config


def test_checkpoint_paths_are_relative_to_the_config(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "w.safetensors").write_bytes(checkpoint_bytes(tmp_path))
    config = pretrained_config(configs, "w.safetensors")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, out, err = cli("plan", config)
    assert (rc, err) == (0, "")
    assert f"checkpoint {configs / 'w.safetensors'}: 2 loaded" in out
    rc, _, err = cli("init", config, "--out", "m.safetensors")
    assert rc == 0, err
    assert torch.equal(load_file("m.safetensors")["0.weight"], torch.full((4, 4), 0.5))
    cfg = load_config(pretrained_config(configs, "file://w.safetensors", "f.yaml"))
    assert cfg.init_cfg[0]["checkpoint"] == f"file://{configs / 'w.safetensors'}"
    nested = configs / "nested.py"  # a rule inside model (a sub-module's init_cfg) too
    nested.write_text(textwrap.dedent("""
        model = dict(type="torch.nn.Linear", in_features=4, out_features=4,
                     init_cfg=[dict(type="Pretrained", checkpoint="../configs/w.safetensors"),
                               dict(type="Normal", std=0.1, checkpoint="not a path")])
        """))
    cfg = load_config(nested)
    assert cfg.model["init_cfg"][0]["checkpoint"] == str(configs / "../configs/w.safetensors")
    assert cfg.model["init_cfg"][1]["checkpoint"] == "not a path"  # only Pretrained rules
    # --set values are typed on the command line: relative to the working directory
    (elsewhere / "v.safetensors").write_bytes(checkpoint_bytes(tmp_path))
    cfg = load_config(config, ["init_cfg.0.checkpoint=v.safetensors"])
    assert cfg.init_cfg[0]["checkpoint"] == "v.safetensors"


def test_a_checkpoint_only_in_the_working_directory_is_an_error_that_says_why(tmp_path,
                                                                             monkeypatch):
    configs = tmp_path / "configs"
    configs.mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(checkpoint_bytes(tmp_path))
    config = pretrained_config(configs, "w.safetensors")
    with pytest.raises(ConfigNotFoundError, match=r"c.yaml: init_cfg\[0\].checkpoint: "
                                                  r"'w.safetensors' is not next to the config"):
        load_config(config)
    rc, _, err = cli("plan", config)
    assert rc == 2 and "Paths in a config file are relative to the config's directory" in err


# ------------------------------------------------------------------ 5. outputs checked first


@pytest.fixture
def marked(tmp_path) -> Path:
    """A config whose model, when built, leaves a marker file."""
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import pathlib
        import torch.nn as nn

        def net():
            pathlib.Path(__file__).with_name("built").touch()
            return nn.Linear(4, 4)
        """))
    path = tmp_path / "c.py"
    path.write_text('model = dict(type="net.py:net")\n')
    return path


def refused(*argv) -> str:
    rc, out, err = cli(*argv)
    assert rc == 2 and err.count("\n") == 1 and "Errno" not in err, (out, err)
    return err


def test_unusable_outputs_are_refused_before_the_init(marked, tmp_path):
    (tmp_path / "afile").write_text("x")
    err = refused("init", marked, "--out", tmp_path / "afile" / "m.pt")
    assert f"--out {tmp_path / 'afile' / 'm.pt'}: {tmp_path / 'afile'} is a file" in err
    assert "Fix: choose a path in a folder" in err
    (tmp_path / "dir.pt").mkdir()
    err = refused("init", marked, "--out", tmp_path / "dir.pt")
    assert "is a folder, not a file. Fix: name a file in it, e.g. --out " in err
    err = refused("init", marked, "--out", tmp_path / "m.pt", "--report",
                  tmp_path / "afile" / "r.md")
    assert f"--report {tmp_path / 'afile' / 'r.md'}: " in err
    err = refused("plan", marked, "--report", tmp_path / "afile" / "deeper" / "r.json")
    assert "is a file" in err
    assert not (tmp_path / "built").exists()  # no model was built


def test_a_folder_that_cannot_be_written_is_refused(marked, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    # as if the folder's permissions kept this user out (root is never kept out: simulated)
    monkeypatch.setattr("weightinit.cli.writing.os.access",
                        lambda path, mode: Path(path) != locked and real(path, mode))
    err = refused("init", marked, "--out", locked / "m.pt")
    assert f"--out {locked / 'm.pt'}: cannot write a file in {locked} (permission denied). " \
           "Fix: choose a folder you can write to" in err
    err = refused("init", marked, "--out", locked / "new" / "m.pt")
    assert f"cannot create a folder in {locked}" in err
    assert not (tmp_path / "built").exists()


def test_a_folder_it_creates_is_named(marked, tmp_path):
    rc, out, err = cli("init", marked, "--out", tmp_path / "outz" / "sub" / "m.pt",
                       "--report", tmp_path / "outz" / "sub" / "r.md")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines.count(f"created folder {tmp_path / 'outz'}/") == 1
    assert (tmp_path / "outz" / "sub" / "m.pt").is_file()
    rc, out, _ = cli("init", marked, "--out", tmp_path / "outz" / "sub" / "m.pt")
    assert rc == 0 and "created folder" not in out


# ------------------------------------------------------------------ 6. py.typed


def test_py_typed_is_shipped_as_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package = ROOT / "src" / "weightinit"
    assert (package / "py.typed").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["weightinit"]
    matched = {Path(f).relative_to(package).as_posix() for p in patterns
               for f in glob(str(package / p), recursive=True)}
    assert "py.typed" in matched and "checkpoint/torchvision.json" in matched


# ------------------------------------------------------------------ 7. --summary samples


SUMMARY = """
model = dict(type="torch.nn.Sequential", args=[
    dict(type="torch.nn.Linear", in_features=512, out_features=512),
    dict(type="torch.nn.Linear", in_features=512, out_features=512),
    dict(type="torch.nn.Linear", in_features=8, out_features=8)])
init_cfg = [dict(type="Normal", layer="Linear", std=0.02),
            dict(type="Eye", override=dict(name="1"))]
seed = 0
"""


def test_summary_measures_large_elementwise_fills_on_a_sample(tmp_path):
    config = tmp_path / "s.py"
    config.write_text(SUMMARY)
    rc, out, err = cli("init", config, "--out", tmp_path / "m.pt", "--summary",
                       "--report", tmp_path / "r.json")
    assert rc == 0, err
    assert (f"mean and std of 1 tensor(s) over {SUMMARY_SAMPLE:,} elements were measured on "
            f"{SUMMARY_SAMPLE:,} randomly chosen elements each") in out
    assert "warning" not in out  # the sampled std agrees with the promise
    rows = {p["name"]: p for p in json.loads((tmp_path / "r.json").read_text())["parameters"]}
    assert rows["0.weight"]["measured"] == SUMMARY_SAMPLE
    assert rows["0.weight"]["std"] == pytest.approx(0.02, rel=0.02)
    assert rows["1.weight"]["measured"] == 512 * 512  # Eye: a structured fill, measured whole
    assert rows["2.weight"]["measured"] == 64
    rc, out, _ = cli("init", config, "--out", tmp_path / "m.pt", "--report", tmp_path / "r.json")
    assert "randomly chosen" not in out
    assert json.loads((tmp_path / "r.json").read_text())["parameters"][0]["measured"] == 512 * 512


def test_a_sample_still_catches_a_tensor_that_lost_its_rule():
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))
    record = wi.initialize(model, dict(type="Normal", layer="Linear", std=0.02), seed=0)
    with torch.no_grad():
        model[1].weight.mul_(1.1)
    report = build_report(model, record, sample=SUMMARY_SAMPLE)
    assert [p.name for p in report.mismatched()] == ["1.weight"]
    assert report["0.weight"].measured == SUMMARY_SAMPLE


# ------------------------------------------------------------------ 8. counts and time remaining


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown(stream: io.StringIO) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())


def test_counted_steps_show_m_of_n_and_the_time_remaining():
    err = Tty()
    out = Output(io.StringIO(), err)
    with out.counting("measuring", 3) as advance:
        for _ in range(3):
            advance(1)
    text = shown(err)
    assert "measuring" in text and "3 of 3 tensors" in text and "✓ measuring (" in text
    columns = [type(getattr(c, "column", c)).__name__
               for c in progress_bar(out.progress, "tensors").columns]
    assert columns[-3:] == ["MofNCompleteColumn", "TextColumn", "TimeRemainingColumn"]
    # lazy: work that may end in one batch shows no count until one is done
    err = Tty()
    with Output(io.StringIO(), err).counting("initializing", 3, lazy=True):
        pass
    assert "initializing" in shown(err) and " of 3" not in shown(err)
    err = Tty()
    with Output(io.StringIO(), err).counting("initializing", 3, lazy=True) as advance:
        advance(2)
    assert "2 of 3 tensors" in shown(err)
    quiet = io.StringIO()
    with Output(io.StringIO(), quiet).counting("measuring", 3) as advance:
        advance(3)
    assert quiet.getvalue() == ""


def test_the_init_is_counted_by_the_parameters_it_writes(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    done = []
    with watch_writes(model, done.append):
        with torch.no_grad():
            model[0].weight.zero_()
            model[1].bias[:2] = 1  # a write through a view counts
        time.sleep(0.5)
    assert sum(done) == 2 and parameter_slots(model) == 4
    config = tmp_path / "c.py"
    config.write_text(SUMMARY)
    err = Tty()
    rc, _, _ = cli("init", config, "--out", tmp_path / "m.pt", stderr=err)
    assert rc == 0
    text = shown(err)
    assert "of 6 tensors" in text and "6 of 6 tensors" in text
    assert "✓ initializing Sequential on cpu" in text and "✓ measuring" in text
