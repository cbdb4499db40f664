"""The README's main job runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_resnet50_example_prints_the_record():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "resnet50.py")],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "Init record of ImageClassifier (161 parameters)" in out
    assert "53 params     23454912 elements  [rule] KaimingInit" in out
    assert "161 tensor writes (an eager init_cfg run makes 193)" in out
    assert "backbone.layer1.0.bn3.weight: ConstantInit: val=0, bias=0 (max |w| = 0)" in out
