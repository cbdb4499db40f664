"""``weightinit plan/init`` on OpenMMLab config files: MMEngine reads them (``_base_``
inheritance, registry types after ``register_all_modules``), the bridge initializes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine.model")
from support import config_path, install_standins  # noqa: E402

install_standins()
pytest.importorskip("mmpretrain")
pytest.importorskip("mmdet")

from safetensors.torch import load_file  # noqa: E402

import weightinit.mmengine as wim  # noqa: E402
from weightinit.cli import main  # noqa: E402
from weightinit.configfile import load_config  # noqa: E402
from weightinit.configfile.openmmlab import is_openmmlab_config  # noqa: E402


@pytest.fixture(autouse=True)
def _uninstall():
    yield
    wim.uninstall()


def test_inheriting_config_is_recognized_without_running_it(tmp_path: Path):
    deit = Path(config_path("mmpretrain", "deit/deit-small_4xb256_in1k.py"))
    assert is_openmmlab_config(deit)
    plain = tmp_path / "plain.py"
    plain.write_text("model = dict(type='torch.nn.Linear', in_features=2, out_features=3)\n")
    assert not is_openmmlab_config(plain)
    scoped = tmp_path / "scoped.py"
    scoped.write_text("default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier')\n")
    assert is_openmmlab_config(scoped)


def test_plan_and_init_an_mmdet_config_with_overrides(tmp_path: Path, capsys):
    cfg = config_path("mmdet", "retinanet/retinanet_r50_fpn_1x_coco.py")
    sets = ["--set", "model.bbox_head.num_classes=7", "--set",
            "model.backbone.init_cfg=None"]  # no download of the torchvision backbone
    assert main(["plan", cfg, "--summary", *sets]) == 0
    out = tmp_path / "retinanet.safetensors"
    assert main(["init", cfg, "--out", str(out), "--summary", "--seed", "0", *sets]) == 0
    state = load_file(out)
    model = load_config(cfg, [s for s in sets if s != "--set"]).build(deferred=False)
    assert set(state) == set(model.state_dict())
    assert state["bbox_head.retina_cls.weight"].shape[0] == 9 * 7  # 9 anchors x 7 classes
    # RetinaHead's own rule: Normal(std=0.01) with the focal-loss prior on the class bias
    bias = state["bbox_head.retina_cls.bias"]
    assert torch.allclose(bias, torch.full_like(bias, -4.59511985013459), atol=1e-6)
    assert abs(float(state["bbox_head.retina_cls.weight"].std()) - 0.01) < 0.001
    assert "RetinaNet" in capsys.readouterr().out


def test_seeded_init_is_reproducible_across_runs(tmp_path: Path):
    cfg = config_path("mmpretrain", "deit/deit-small_4xb256_in1k.py")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for out in (a, b):
        assert main(["init", cfg, "--out", str(out), "--summary", "--seed", "3"]) == 0
    sa, sb = load_file(a), load_file(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ffn = "backbone.layers.0.ffn.layers.0.0.weight"  # written by user code (xavier_uniform_)
    bound = (6 / (384 + 1536)) ** 0.5
    assert float(sa[ffn].abs().max()) <= bound and float(sa[ffn].std()) > 0.5 * bound / 3 ** 0.5


def test_broken_override_is_a_config_error(capsys):
    cfg = config_path("mmpretrain", "deit/deit-small_4xb256_in1k.py")
    assert main(["plan", cfg, "--set", "model.head.num_classes"]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


def test_a_package_whose_compiled_ops_do_not_load_is_one_error_line_not_a_traceback():
    # What a user meets with a torchvision built for another torch (as the registry's
    # CUDA wheel beside this CPU torch): run as a user would, without the test stand-ins.
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True,
                           text=True, timeout=120)
    if probe.returncode == 0:
        pytest.skip("torchvision loads here: nothing to refuse")
    config = Path(importlib.util.find_spec("mmpretrain").origin).parent / ".mim" / "configs" \
        / "deit" / "deit-small_4xb256_in1k.py"
    done = subprocess.run([sys.executable, "-m", "weightinit", "plan", str(config)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("weightinit: error: deit-small_4xb256_in1k.py: "
                               "default_scope='mmpretrain': registering")
    assert "torchvision::nms" in lines[0]
    assert "install the torchvision release built for this torch" in lines[0]
