"""Start-up cost: ``import weightinit`` (and the CLI) load no heavy optional parts.

``torch.distributed.tensor`` alone costs about half a second to import; it is
only touched once a DTensor exists (whoever made it imported it). YAML and
matplotlib load when a YAML config is read or a plot is drawn. Timings live
in the issue notes, not here: this checks what is imported, which is what
makes the time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["torch.distributed.tensor", "torch.distributed.fsdp", "yaml", "matplotlib"]


@pytest.mark.parametrize("module", ["weightinit", "weightinit.cli"])
def test_importing_loads_no_heavy_optional_module(module):
    code = (f"import json, sys, {module}; "
            f"print(json.dumps({{h: h in sys.modules for h in {HEAVY!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout) == {h: False for h in HEAVY}


def test_sharded_tensors_are_still_recognized_once_dtensor_is_loaded():
    code = ("import sys, torch, weightinit.planning.layout as L; "
            "assert not L.is_sharded(torch.ones(2)) and L.dtensor_types() is None; "
            "from weightinit.compat import dtensor_module; dt = dtensor_module(); "
            "assert L.dtensor_types()[0] is dt.DTensor; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "ok"
