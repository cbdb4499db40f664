"""SPEC B7: the ``weightinit`` command line — plan, init, check; errors as one line, exit 2."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weightinit.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"


def cli(*argv: str, stderr: io.StringIO | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), stderr or io.StringIO()
    rc = main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(textwrap.dedent("""
        model:
          type: torch.nn.Sequential
          args:
            - {type: torch.nn.Linear, in_features: 16, out_features: 32}
            - {type: torch.nn.ReLU}
            - {type: torch.nn.Linear, in_features: 32, out_features: 4}
            - {type: torch.nn.LayerNorm, normalized_shape: 4}
        init_cfg:
          - {type: Kaiming, layer: Linear, mode: fan_in}
          - {type: Normal, std: 0.01, override: {name: "2"}}
        input: {shape: [8, 16]}
        """))
    return path


def test_plan_prints_owners_and_coverage_without_allocating(small):
    rc, out, err = cli("plan", small)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "Sequential: plan, 6 parameters (all float32 on meta)"
    row = next(line for line in lines if "│ 0.weight" in line)
    assert "(32, 16)" in row and "Kaiming(a=0, mode=fan_in" in row and "0.3536" in row
    row = next(line for line in lines if "│ 2.weight" in line)
    assert "Normal(mean=0, std=0.01, bias=0)" in row
    assert "<root> (Sequential) init_cfg[1].override" in row
    assert "coverage: 6 parameters, 684 elements" in lines
    assert "6 tensor writes planned; an eager run makes 12 (6 at construction + 6 by init_cfg)." \
        in lines
    assert lines[-1] == ("warning: 2 parameter(s) (8 elements) left at the PyTorch default or "
                         "untouched: 3.weight, 3.bias")


def test_plan_summary_and_report_files(small, tmp_path):
    rc, out, _ = cli("plan", small, "--summary", "--report", tmp_path / "p.json",
                     "--report", tmp_path / "p.md")
    assert rc == 0 and "0.weight" not in out
    assert f"wrote {tmp_path / 'p.json'}" in out.splitlines()
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["source"] == "plan" and data["totals"] == {"parameters": 6, "elements": 684}
    assert data["parameters"][0]["device"] == "meta" and data["parameters"][0]["std"] is None
    assert (tmp_path / "p.md").read_text().startswith("# Init report: Sequential\n")


def test_plan_any_size_on_meta():
    rc, out, _ = cli("plan", CONFIGS / "llama.yaml", "--set", "model.size=70b", "--summary")
    assert rc == 0
    assert "coverage: 723 parameters, 68,976,648,192 elements" in out.splitlines()


def test_init_saves_reports_and_is_reproducible(small, tmp_path):
    ckpt, md, js = tmp_path / "m.safetensors", tmp_path / "r.md", tmp_path / "r.json"
    rc, out, err = cli("init", small, "--out", ckpt, "--report", md, "--report", js)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("Sequential: 6 parameters, 684 elements, initialized in ")
    assert lines[1] == "Sequential: init record, 6 parameters (all float32 on cpu)"
    assert f"wrote {ckpt} (0.0 MB)" in lines and f"wrote {md}" in lines and f"wrote {js}" in lines
    state = load_file(str(ckpt))
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight", "3.bias", "3.weight"]
    assert torch.all(state["0.bias"] == 0) and torch.all(state["3.weight"] == 1)
    data = json.loads(js.read_text())
    w = next(p for p in data["parameters"] if p["name"] == "0.weight")
    assert w["promised_std"] == pytest.approx(0.5 ** 0.5 / 2)  # He fan_in: sqrt(2 / 16)
    assert abs(w["std"] - w["promised_std"]) < 0.1 * w["promised_std"]
    assert w["std"] == pytest.approx(state["0.weight"].std(correction=0).item(), rel=1e-5)
    assert "| `2.weight` | (4, 32) | float32 | cpu | Normal(mean=0, std=0.01, bias=0) |" in \
        md.read_text()
    # Same seed, same weights; another seed, other weights.
    cli("init", small, "--out", tmp_path / "again.safetensors")
    assert torch.equal(load_file(str(tmp_path / "again.safetensors"))["0.weight"],
                       state["0.weight"])
    cli("init", small, "--out", tmp_path / "seed1.pth", "--seed", "1", "--summary")
    other = torch.load(tmp_path / "seed1.pth", weights_only=True)
    assert not torch.equal(other["0.weight"], state["0.weight"])


def test_init_dtype_and_eager(small, tmp_path):
    rc, out, _ = cli("init", small, "--out", tmp_path / "m.pt", "--dtype", "bfloat16", "--eager",
                     "--summary")
    assert rc == 0
    assert torch.load(tmp_path / "m.pt", weights_only=True)["0.weight"].dtype == torch.bfloat16


def test_check_flags_a_bad_init_and_plots_the_comparison(tmp_path):
    png, js, md = tmp_path / "check.png", tmp_path / "check.json", tmp_path / "check.md"
    rc, out, _ = cli("check", CONFIGS / "mlp_kaiming.py", CONFIGS / "mlp_std1.py",
                     "--plot", png, "--report", js, "--report", md, "--summary")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith("mlp_kaiming: ok — activation gain ")
    assert lines[1].startswith("mlp_std1: FLAGGED — exploding activations: std grows ×")
    assert lines[2:] == [f"wrote {png}", f"wrote {js}", f"wrote {md}"]
    text = md.read_text().splitlines()
    assert text[:3] == ["# weightinit check", "", "## mlp_kaiming"]
    assert "| # | layer | type | activation std | gradient std |" in text
    assert any(line.startswith("| 1 | `0` | Linear | ") for line in text)
    assert png.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(js.read_text())
    assert [(r["label"], r["flagged"]) for r in data] == [("mlp_kaiming", False),
                                                         ("mlp_std1", True)]
    assert len(data[0]["layers"]) == 21


def test_check_good_init_exits_0_and_prints_the_layers(small):
    rc, out, _ = cli("check", small, "--input-shape", "4,16")
    assert rc == 0
    assert "small: signal per layer (forward order)" in out
    assert any("│ <input> " in line for line in out.splitlines())
    assert out.splitlines()[-1].startswith("small: ok — activation gain")


def test_check_token_model_draws_ids_below_its_vocabulary():
    rc, out, _ = cli("check", CONFIGS / "llama.yaml", "--set", "model.size=tiny", "--summary")
    assert rc == 0 and out.startswith("llama: ok — activation gain ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_init_and_check_on_cuda(small, tmp_path):
    # In a subprocess: the first CUDA matmul in a process keeps cuBLAS workspace allocated,
    # which would skew the memory measurements of tests that run after this one.
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "weightinit", *map(str, argv)],
                              capture_output=True, text=True, timeout=300)

    done = run("init", small, "--out", tmp_path / "m.safetensors", "--device", "cuda",
               "--dtype", "bfloat16")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == ("Sequential: init record, 6 parameters (all bfloat16 "
                                           "on cuda:0)")
    assert load_file(str(tmp_path / "m.safetensors"))["0.weight"].dtype == torch.bfloat16
    done = run("check", small, CONFIGS / "mlp_std1.py", "--device", "cuda", "--summary")
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("small: ok")
    assert done.stdout.splitlines()[1].startswith("mlp_std1: FLAGGED")


def test_progress_goes_to_stderr_only_on_a_terminal(small, tmp_path):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    rc, _, _ = cli("init", small, "--out", tmp_path / "m.safetensors", "--summary", stderr=err)
    assert rc == 0
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err.getvalue())
    assert "✓ initializing Sequential on cpu" in shown and "✓ measuring" in shown
    rc, _, plain = cli("init", small, "--out", tmp_path / "m.safetensors", "--summary")
    assert plain == ""


# ------------------------------------------------------------------ mistakes: exit 2, one line


def fails(*argv: str) -> str:
    rc, out, err = cli(*argv)
    assert rc == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def test_missing_config_file(tmp_path):
    assert fails("plan", tmp_path / "nope.py") == (
        f"weightinit: error: {tmp_path / 'nope.py'}: no such file. Fix: give the path of a "
        "config file.")


def test_unknown_type_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {type: torch.nn.Linaer, in_features: 2, out_features: 2}\n")
    assert fails("init", path, "--out", tmp_path / "x.safetensors").startswith(
        "weightinit: error: c.yaml: model.type: torch.nn has no attribute 'Linaer'. Did you mean "
        "'torch.nn.Linear'")
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_arguments():
    assert fails("plan", "x.py", "--bogus") == \
        "weightinit: error: unrecognized arguments: --bogus (see 'weightinit --help')"
    assert fails("init", "x.py") == ("weightinit: error: the following arguments are required: "
                                     "--out/-o (see 'weightinit init --help')")
    assert fails("init", "x.py", "--out", "m.npz") == (
        "weightinit: error: --out m.npz: unsupported file type; use one of .safetensors, .pth, "
        ".pt, .bin")
    assert fails("plan", "x.py", "--report", "r.txt") == (
        "weightinit: error: --report r.txt: unsupported file type; use one of .json, .md, "
        ".markdown")
    assert fails("plna", "x.py").startswith(
        "weightinit: error: argument COMMAND: invalid choice: 'plna'")
    assert fails("init", "x.py", "--out", "m.pt", "--seed", "one") == (
        "weightinit: error: argument --seed: invalid int value: 'one' (see 'weightinit init "
        "--help')")
    assert fails("check", "x.py", "--limit", "0.5") == "weightinit: error: --limit must be > 1, " \
                                                       "got 0.5"


def test_bad_config_values(small, tmp_path):
    assert fails("check", small, "--input-shape", "4,x") == (
        "weightinit: error: --input-shape: shape '4,x' is not a list of ints, e.g. 8,3,224,224")
    assert fails("init", small, "--out", tmp_path / "m.pt", "--dtype", "int8") == (
        "weightinit: error: --dtype: unknown dtype 'int8'. Known: float32, float, float16, half, "
        "bfloat16, float64, double.")
    assert fails("init", small, "--out", tmp_path / "m.pt", "--device", "nodevice").startswith(
        "weightinit: error: device 'nodevice' is not usable here: ")
    assert fails("plan", small, "--set", "model.args[0]").startswith(
        "weightinit: error: small.yaml: bad override 'model.args[0]'")
    assert fails("check", small, "--set", "input.dtype=long") == (
        "weightinit: error: small.yaml: input.dtype is long but the model has no nn.Embedding to "
        "take the number of token ids from. Fix: add input.high=<number of token ids>.")
    noinput = tmp_path / "noinput.yaml"
    noinput.write_text("model: {type: torch.nn.Linear, in_features: 2, out_features: 2}\n")
    assert fails("check", noinput) == (
        "weightinit: error: noinput.yaml: no input shape for the check. Fix: add input = "
        "dict(shape=[...]) to the config or pass --input-shape.")
    assert fails("check", noinput, "--input-shape", "2,3").startswith(
        "weightinit: error: health check: Linear failed on random input of shape (2, 3): ")


def test_undefined_tensors_fail_the_plan(tmp_path):
    (tmp_path / "raw.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn

        class Raw(nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = nn.Parameter(torch.empty(3))
        """))
    path = tmp_path / "c.yaml"
    path.write_text("model: {type: raw.py:Raw}\n")
    rc, out, err = cli("plan", path)
    assert rc == 2 and "scale" in out
    assert err == ("weightinit: error: c.yaml: 1 tensor(s) would be left without a defined value: "
                   "scale. Fix: add an init_cfg rule that covers them.\n")
    assert fails("init", path, "--out", tmp_path / "m.pt").startswith(
        "weightinit: error: Raw: 1 tensor(s) would be left without a defined value: scale (its "
        "constructor creates it with torch.empty and never writes it).")


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert fails("check", CONFIGS / "mlp_kaiming.py", "--plot", tmp_path / "c.png") == (
        "weightinit: error: --plot needs matplotlib, which is not installed. Fix: pip install "
        "'weightinit[plot]' (or pip install matplotlib).")


def test_debug_shows_the_exception(tmp_path):
    from weightinit.configfile import ConfigNotFoundError

    with pytest.raises(ConfigNotFoundError):
        cli("plan", tmp_path / "nope.py", "--debug")


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: weightinit [-h] [--version] COMMAND ...")
    for command in ("plan", "init", "check"):
        assert f"    {command}" in text
    assert main(["check", "--help"]) == 0
    assert "--input-shape SHAPE" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("weightinit 0.")
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: weightinit")


def test_installed_console_script(tmp_path):
    script = Path(sys.executable).parent / "weightinit"
    assert script.exists(), "install the package: .venv/bin/pip install --no-deps -e ."
    done = subprocess.run([str(script), "plan", str(CONFIGS / "llama.yaml"), "--summary"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "coverage: 219 parameters, 1,641,121,792 elements" in done.stdout.splitlines()
    done = subprocess.run([str(script), "init", str(tmp_path / "nope.yaml"), "--out", "x.pt"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == (f"weightinit: error: {tmp_path / 'nope.yaml'}: no such file. Fix: "
                           "give the path of a config file.\n")
