"""The README's main job runs as written: ``weightinit init`` on the bundled ResNet-50."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weightinit import compat

ROOT = Path(__file__).resolve().parents[1]


def test_resnet50_main_job_prints_the_report_and_writes_checkpoint_and_report(tmp_path):
    # scripts/run.sh example runs exactly this, with out/ instead of tmp_path.
    script = Path(sys.executable).parent / "weightinit"
    ckpt, md, js = tmp_path / "resnet50.safetensors", tmp_path / "resnet50-report.md", \
        tmp_path / "resnet50-report.json"
    done = subprocess.run([str(script), "init", "examples/configs/resnet50.py", "--out", str(ckpt),
                           "--report", str(md), "--report", str(js)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ImageClassifier: 161 parameters, 25,557,032 elements, "
                               "initialized in ")
    assert lines[1] == "ImageClassifier: init record, 161 parameters (all float32 on cpu)"
    rows = [line for line in lines if line.startswith("│ ")]
    assert len(rows) == 161 + 4  # one per parameter, then one per rule in the coverage table

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("│").split("│")]

    table = {cells(r)[0]: cells(r) for r in rows[:161]}
    assert table["backbone.conv1.weight"][1:4] == [
        "(64, 3, 7, 7)", "Kaiming(a=0, mode=fan_out, nonlinearity=relu, distribution=normal, "
        "bias=0)", "backbone (ResNet) init_cfg[0]"]
    assert table["backbone.conv1.weight"][-1] == "0.02525 ✓"  # sqrt(2 / (64 * 7 * 7))
    assert table["backbone.layer1.0.bn3.weight"][2:] == [
        "Constant(val=0, bias=0)", "backbone.layer1.0 (Bottleneck) init_cfg.override", "0", "0",
        "0 ✓"]
    assert table["head.fc.weight"][2:4] == ["Normal(mean=0, std=0.01, bias=0)",
                                            "head (LinearHead) init_cfg"]
    assert table["head.fc.weight"][-1] == "0.01 ✓"
    assert all(r[-1].endswith("✓") for r in table.values())  # every std as promised
    assert [cells(r) for r in rows[161:]] == [
        ["Kaiming(a=0, mode=fan_out, nonlinearity=relu, distribution=normal, bias=0)", "rule",
         "53", "23,454,912", "91.8 %"],
        ["Normal(mean=0, std=0.01, bias=0)", "rule", "2", "2,049,000", "8.0 %"],
        ["Constant(val=0, bias=0)", "rule", "32", "30,208", "0.1 %"],
        ["Constant(val=1, bias=0)", "rule", "74", "22,912", "0.1 %"],
    ]
    assert "warning" not in done.stdout  # every parameter is covered by a rule
    assert lines[-3:] == [f"wrote {ckpt} (102.5 MB)", f"wrote {md}", f"wrote {js}"]

    state = load_file(str(ckpt))
    assert len(state) == 161 + 3 * 53  # parameters and BatchNorm buffers
    assert torch.all(state["backbone.layer4.2.bn3.weight"] == 0)
    assert torch.all(state["backbone.bn1.running_var"] == 1)
    assert state["head.fc.weight"].std().item() == pytest.approx(0.01, rel=0.01)

    report = md.read_text()
    assert report.startswith("# Init report: ImageClassifier\n\n161 parameters, 25,557,032 "
                             "elements (from the init record).\n")
    assert ("| Kaiming(a=0, mode=fan_out, nonlinearity=relu, distribution=normal, bias=0) | rule "
            "| 53 | 23,454,912 | 91.8 % |") in report.splitlines()
    data = json.loads(js.read_text())
    assert data["totals"] == {"parameters": 161, "elements": 25557032}
    assert data["left_at_default"] == [] and data["std_mismatches"] == []


@pytest.mark.skipif(not compat.has_cpu_fsdp2(),
                    reason="FSDP2 on a CPU mesh needs torch >= 2.6")
def test_sharded_example_gathers_the_single_process_values():
    pytest.importorskip("torch.distributed")
    done = subprocess.run([sys.executable, "examples/sharded.py", "--ranks", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("rank ")]
    assert lines == ["rank 0/2: holds 110,240 of 220,480 parameter elements",
                     "rank 1/2: holds 110,240 of 220,480 parameter elements"]
    assert "all 21 parameters identical to a single-process init (seed=0)" in done.stdout
