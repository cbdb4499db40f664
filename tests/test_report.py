"""SPEC B7: the init report — per-parameter owner, source, measured vs promised std, coverage."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import weightinit as wi
from weightinit.report import build_report, plan_report, promised_std


class Gate(nn.Module):
    """Not a BaseModule: a user-defined init_weights wins over its ancestors' rules."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def init_weights(self):
        nn.init.zeros_(self.fc.weight)
        nn.init.ones_(self.fc.bias)


class Net(wi.BaseModule):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg if init_cfg is not None else [
            dict(type="Kaiming", layer="Conv2d", mode="fan_out"),
            dict(type="Constant", layer="BatchNorm2d", val=1, bias=0),
            dict(type="TruncNormal", layer="Linear", std=0.02, bias=0.1),
            dict(type="Normal", std=0.5, override=dict(name="head")),
        ])
        self.conv = nn.Conv2d(3, 16, 3)   # 432 + 16
        self.bn = nn.BatchNorm2d(16)      # 16 + 16
        self.fc = nn.Linear(16, 32)       # 512 + 32
        self.gate = Gate()                # 64 + 8
        self.head = nn.Linear(32, 4)      # 128 + 4
        self.free = nn.LayerNorm(4)       # 4 + 4, no rule: PyTorch default


@pytest.fixture
def report():
    torch.manual_seed(0)
    m = Net()
    m.init_weights()
    return build_report(m)


def test_coverage_counts_parameters_and_elements_per_rule(report):
    rows = [(r.rule, r.kind, r.parameters, r.elements) for r in report.coverage()]
    assert rows == [
        ("TruncNormal(a=-2, b=2, mean=0, std=0.02, bias=0.1)", "rule", 2, 544),
        ("Kaiming(a=0, mode=fan_out, nonlinearity=relu, distribution=normal, bias=0)", "rule", 2,
         448),
        ("Normal(mean=0, std=0.5, bias=0)", "rule", 2, 132),
        ("zeros_() in Gate.init_weights", "user", 1, 64),  # each call user code made
        ("Constant(val=1, bias=0)", "rule", 2, 32),
        ("PyTorch default", "unchanged", 2, 8),
        ("ones_() in Gate.init_weights", "user", 1, 8),
    ]
    assert len(report) == 12 and report.total_elements == 1236
    assert [p.name for p in report.at_default()] == ["free.weight", "free.bias"]
    assert report.warnings() == ["2 parameter(s) (8 elements) left at the PyTorch default or "
                                 "untouched: free.weight, free.bias"]


def test_owner_and_where_it_was_declared(report):
    assert report["conv.weight"].declared_in == "<root> (Net) init_cfg[0]"
    assert report["head.weight"].declared_in == "<root> (Net) init_cfg[3].override"
    assert report["head.weight"].rule_type == "Normal"
    assert report["gate.fc.weight"].kind == "user"
    assert report["gate.fc.weight"].declared_in == "user-defined init_weights in Gate"
    assert report["free.bias"].declared_in == "PyTorch default (kept its value from construction)"
    assert report["free.bias"].rule_text == "PyTorch default"
    p = report["conv.weight"]
    assert (p.shape, p.dtype, p.device, p.numel) == ((16, 3, 3, 3), "float32", "cpu", 432)


def test_promised_std_is_the_rules_formula_and_zero_for_constant_biases(report):
    # He, fan_out = 16 * 3 * 3: std = sqrt(2 / 144)
    assert report["conv.weight"].promised_std == pytest.approx(math.sqrt(2 / 144), rel=1e-12)
    assert report["conv.bias"].promised_std == 0.0
    assert report["fc.weight"].promised_std == pytest.approx(0.02, rel=1e-12)  # bounds 100σ away
    assert report["fc.bias"].promised_std == 0.0
    assert report["fc.bias"].mean == pytest.approx(0.1)
    assert report["head.weight"].promised_std == 0.5
    assert report["bn.weight"].promised_std == 0.0
    for name in ("gate.fc.weight", "free.weight"):
        assert report[name].promised_std is None and report[name].std_matches is None


def test_measured_std_is_close_to_the_promise(report):
    for name in ("conv.weight", "fc.weight", "head.weight"):
        p = report[name]
        assert p.std_matches is True
        assert abs(p.std - p.promised_std) < 0.2 * p.promised_std, name
        assert abs(p.mean) < 0.25 * p.promised_std, name
    assert report["bn.weight"].mean == 1.0 and report["bn.weight"].std == 0.0
    assert report["gate.fc.bias"].mean == 1.0


def test_weight_std_of_rules_that_gained_one():
    trunc2 = 0.87962566103423978  # std of N(0, 1) truncated to ±2
    assert wi.TruncNormalInit(std=1.0).weight_std((4, 4)) == pytest.approx(trunc2, rel=1e-12)
    assert wi.TruncNormalInit(mean=1.0, std=1.0, a=-1.0, b=3.0).weight_std((4,)) == \
        pytest.approx(trunc2, rel=1e-12)
    assert wi.TFTruncNormalInit(std=0.5).weight_std((4, 4)) == pytest.approx(0.5 * trunc2)
    assert wi.EyeInit().weight_std((3, 5)) == pytest.approx(0.4)  # p = 1/5: sqrt(p(1-p))
    assert wi.ZeroInitResidualInit(norm="bn").weight_std((8,)) == 0.0
    # The truncated normal really has that std.
    w = torch.empty(200_000)
    torch.manual_seed(0)
    wi.trunc_normal_(w, std=1.0)
    assert w.std().item() == pytest.approx(trunc2, rel=0.01)


def test_promised_std_by_role():
    rule = wi.UniformInit(a=-1, b=1)
    assert promised_std(rule, "weight", (4, 4)) == pytest.approx(2 / math.sqrt(12))
    assert promised_std(rule, "bias", (4,)) == 0.0
    assert promised_std(wi.DefaultInit(layer="Linear"), "reset", (4, 4)) is None
    assert promised_std(object(), "weight", (4, 4)) is None


def test_variance_scaling_promises_by_the_owning_modules_fans():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(1000, 64), nn.Conv2d(64, 64, 3, groups=8))
    record = wi.initialize(m, [dict(type="LeCunNormal", layer="Embedding"),
                               dict(type="VarianceScaling", layer="Conv2d", scale=2.0,
                                    mode="fan_out", distribution="normal")])
    rep = build_report(m, record)
    assert rep["0.weight"].promised_std == 1.0  # an embedding row is read alone: fan_in = 1
    assert rep["1.weight"].promised_std == pytest.approx(math.sqrt(2 / (64 / 8 * 9)))
    assert rep["0.weight"].std_matches and rep["1.weight"].std_matches
    with wi.deferred():
        m = nn.Sequential(nn.Embedding(1000, 64))
    rep = plan_report(wi.plan(m, dict(type="LeCunNormal", layer="Embedding")), m)
    assert rep["0.weight"].promised_std == 1.0


def test_param_targeted_tensors_get_the_weight_promise():
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 64))
            self.fc = nn.Linear(64, 64)

    m = Tok()
    record = wi.initialize(m, [dict(type="TruncNormal", param="cls_token", std=0.02),
                               dict(type="Eye", layer="Linear")])
    rep = build_report(m, record)
    assert rep["cls_token"].promised_std == pytest.approx(0.02)
    assert rep["fc.weight"].promised_std == pytest.approx(math.sqrt(1 / 64 * 63 / 64))
    assert rep["fc.weight"].std == pytest.approx(rep["fc.weight"].promised_std, rel=1e-5)
    assert rep["fc.weight"].std_matches is True


def test_a_tensor_changed_after_init_is_reported_as_missing_its_promise():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    record = wi.initialize(m, dict(type="Normal", layer="Linear", std=0.02))
    with torch.no_grad():
        m[0].weight.mul_(3)
    rep = build_report(m, record)
    assert rep["0.weight"].std_matches is False
    assert rep["1.weight"].std_matches is True
    assert [p.name for p in rep.mismatched()] == ["0.weight"]
    assert rep.warnings()[0].startswith("1 parameter(s) do not have the std their rule promises: "
                                        "0.weight (0.06")


def test_json_structure(report):
    data = json.loads(report.to_json())
    assert list(data) == ["root", "source", "totals", "coverage", "left_at_default",
                          "std_mismatches", "undefined", "notes", "parameters"]
    assert data["root"] == "Net" and data["source"] == "init record"
    assert data["totals"] == {"parameters": 12, "elements": 1236}
    assert data["left_at_default"] == ["free.weight", "free.bias"]
    assert data["coverage"][0] == {"rule": "TruncNormal(a=-2, b=2, mean=0, std=0.02, bias=0.1)",
                                   "kind": "rule", "parameters": 2, "elements": 544}
    conv = data["parameters"][0]
    assert list(conv) == ["name", "shape", "dtype", "device", "numel", "kind", "rule", "info",
                          "declared_in", "mean", "std", "promised_std", "std_matches",
                          "measured"]
    assert conv["measured"] == 16 * 3 * 3 * 3  # every element: no sample asked for
    assert conv["name"] == "conv.weight" and conv["shape"] == [16, 3, 3, 3]
    assert conv["rule"] == {"type": "Kaiming", "args": {
        "a": 0, "mode": "fan_out", "nonlinearity": "relu", "distribution": "normal", "bias": 0,
        "layer": ["Conv2d"]}}
    assert conv["info"] == "KaimingInit: a=0, mode=fan_out, nonlinearity=relu, " \
                           "distribution=normal, bias=0"
    assert conv["std_matches"] is True
    free = data["parameters"][-1]
    assert (free["kind"], free["promised_std"], free["std_matches"]) == ("unchanged", None, None)


def test_markdown_tables(report):
    md = report.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "# Init report: Net"
    assert "12 parameters, 1,236 elements (from the init record)." in lines
    assert "| TruncNormal(a=-2, b=2, mean=0, std=0.02, bias=0.1) | rule | 2 | 544 | 44.0 % |" \
        in lines
    assert "| PyTorch default | unchanged | 2 | 8 | 0.6 % |" in lines
    assert ("> **Warning:** 2 parameter(s) (8 elements) left at the PyTorch default or untouched: "
            "free.weight, free.bias") in lines
    assert ("| `bn.weight` | (16) | float32 | cpu | Constant(val=1, bias=0) | "
            "<root> (Net) init_cfg[1] | 1 | 0 | 0 ✓ |") in lines
    assert ("| `free.bias` | (4) | float32 | cpu | PyTorch default | PyTorch default (kept its "
            "value from construction) | 0 | 0 |  |") in lines
    assert ("| `gate.fc.bias` | (8) | float32 | cpu | ones_() in Gate.init_weights | "
            "user-defined init_weights in Gate | 1 | 0 |  |") in lines
    conv = next(line for line in lines if line.startswith("| `conv.weight`"))
    assert conv.endswith(f"| {report['conv.weight'].std:.4g} | 0.1179 ✓ |")


def test_write_picks_the_format_by_extension(report, tmp_path):
    report.write(str(tmp_path / "r.json"))
    report.write(str(tmp_path / "r.md"))
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["parameters"] == 12
    assert (tmp_path / "r.md").read_text().startswith("# Init report: Net\n")


def test_rich_tables_hide_uniform_columns(report):
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(report.rich_table())
    console.print(report.rich_coverage())
    text = console.export_text()
    assert "Net: init record, 12 parameters (all float32 on cpu)" in text
    assert "dtype" not in text.splitlines()[2]
    assert "coverage: 12 parameters, 1,236 elements" in text
    row = next(line for line in text.splitlines() if "head.weight" in line)
    assert "Normal(mean=0, std=0.5, bias=0)" in row and "0.5 ✓" in row
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    rep = build_report(m, wi.initialize(m, dict(type="Zeros", layer="Linear")))
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(rep.rich_table())
    text = console.export_text()
    assert "(on cpu)" in text and "float64" in text


def test_pretrained_parameters_name_the_checkpoint_key(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(4, 4))
    path = tmp_path / "src.safetensors"
    save_file(src.state_dict(), str(path))
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    record = wi.initialize(m, [dict(type="Zeros", layer="Linear"),
                               dict(type="Pretrained", checkpoint=str(path))])
    rep = build_report(m, record)
    p = rep["0.weight"]
    assert p.kind == "pretrained" and p.rule_type == "Pretrained"
    assert p.declared_in == f"checkpoint {path} key 0.weight (<root> (Sequential) init_cfg[1])"
    assert p.promised_std is None
    assert torch.equal(m[0].weight, src[0].weight)
    assert p.std == pytest.approx(src[0].weight.std(correction=0).item())
    assert rep["1.weight"].rule_type == "Zeros"
    assert any(n.startswith(f"checkpoint {path}") for n in rep.notes)


def test_build_report_needs_a_record():
    with pytest.raises(wi.InitError, match="has no init record"):
        build_report(nn.Linear(2, 2))


def test_plan_report_on_meta_names_owners_and_promises_without_measuring():
    with wi.deferred():
        m = Net()
    rep = plan_report(wi.plan(m), m)
    assert rep.source == "plan"
    p = rep["conv.weight"]
    assert (p.device, p.mean, p.std) == ("meta", None, None)
    assert p.promised_std == pytest.approx(math.sqrt(2 / 144))
    assert rep["fc.bias"].promised_std == 0.0
    assert rep["gate.fc.weight"].kind == "user"
    assert rep["free.weight"].kind == "unchanged"
    assert rep["free.weight"].declared_in == "PyTorch default (constructor: ones_)"
    assert [(r.rule, r.parameters) for r in rep.coverage()][-1] == ("PyTorch default", 2)
    assert rep.notes == ["12 tensor writes planned; an eager run makes 24 (12 at construction "
                         "+ 12 by init_cfg)."]
    assert all(t.is_meta for t in m.parameters())  # nothing was allocated


def test_plan_report_lists_undefined_tensors():
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.empty(3))

    with wi.deferred():
        m = nn.Sequential(Raw(), nn.Linear(3, 3))
    rep = plan_report(wi.plan(m, [], allow_undefined=True), m)
    assert [n for n, _ in rep.undefined] == ["0.scale"]
    assert rep.warnings()[-1].startswith("1 tensor(s) would have no defined value: 0.scale (")
    assert json.loads(rep.to_json())["undefined"][0]["name"] == "0.scale"
