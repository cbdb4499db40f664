"""``weightinit.mmengine``: install/uninstall, users' initializers registered with MMEngine,
configs an override owns, deferred real models, and failures inside real models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

pytest.importorskip("mmengine.model")
from support import install_standins  # noqa: E402

install_standins()
pytest.importorskip("mmpretrain")
pytest.importorskip("mmseg")

import mmengine.model as mm_model  # noqa: E402
from mmengine.model.weight_init import BaseInit as MMBaseInit  # noqa: E402
from mmengine.registry import WEIGHT_INITIALIZERS as MM_INITIALIZERS  # noqa: E402
from test_real_models import build, close_in_distribution, localize_checkpoints  # noqa: E402

import weightinit as wi  # noqa: E402
import weightinit.mmengine as wim  # noqa: E402


def _own_init_weights() -> dict[type, object]:
    """Every class's own init_weights function, for MMEngine's BaseModule and its subclasses."""
    out, todo = {}, [mm_model.BaseModule]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "init_weights" in cls.__dict__:
            out[cls] = cls.__dict__["init_weights"]
    return out


def test_uninstall_restores_mmengine_exactly():
    build("vit-b", 0)  # import the model classes first
    before = _own_init_weights()
    assert "__init_subclass__" not in mm_model.BaseModule.__dict__
    wim.install()
    wim.install()  # idempotent
    assert wim.is_installed()
    assert mm_model.BaseModule.__dict__["init_weights"] is wim.init_weights
    wrapped = _own_init_weights()
    overridden = [c for c in before if c is not mm_model.BaseModule]
    assert overridden and all(wrapped[c] is not before[c] for c in overridden)

    class Late(mm_model.BaseModule):  # defined while installed: wrapped too
        def init_weights(self):
            super().init_weights()

    original_late = Late.__dict__["init_weights"].__wrapped__
    wim.uninstall()
    assert not wim.is_installed()
    assert _own_init_weights() == {**before, Late: original_late}
    assert "__init_subclass__" not in mm_model.BaseModule.__dict__
    # and MMEngine runs its own code again: its record texts, its _params_init_info
    m = build("deit-s", 0)
    m.init_weights()
    assert wi.get_init_record(m) is None and not hasattr(m, "_params_init_info")


def test_installed_context_manager_leaves_it_as_it_was():
    with wim.installed():
        assert wim.is_installed()
        with wim.installed():
            pass
        assert wim.is_installed()
    assert not wim.is_installed()


@MM_INITIALIZERS.register_module(name="HalfOnes", force=True)
class HalfOnes(MMBaseInit):
    """A user's initializer registered with MMEngine: weights 0.5, bias as MMEngine's BaseInit."""

    def __call__(self, module: nn.Module) -> None:
        def init(m):
            if isinstance(m, nn.Linear):
                nn.init.constant_(m.weight, 0.5)
                nn.init.constant_(m.bias, self.bias)

        module.apply(init)


class Head(mm_model.BaseModule):
    def __init__(self):
        super().__init__(init_cfg=[dict(type="HalfOnes", bias=0.25),
                                   dict(type="Normal", layer="Conv2d", std=0.01)])
        self.fc = nn.Linear(4, 3)
        self.conv = nn.Conv2d(3, 3, 1)


def test_custom_initializer_registered_with_mmengine_runs_through_the_bridge():
    mm = Head()
    mm.init_weights()
    with wim.installed():
        ours = Head()
        ours.init_weights()
    assert torch.equal(ours.fc.weight, mm.fc.weight) and torch.all(ours.fc.bias == 0.25)
    record = wi.get_init_record(ours)
    assert record["fc.weight"].kind == "initializer"
    assert record["fc.weight"].info == "HalfOnes, bias=0.25"  # its own text, as in MMEngine
    assert record["conv.weight"].info == "NormalInit: mean=0, std=0.01, bias=0"


def test_unknown_type_names_mmengine_and_weightinit_registries():
    class Bad(mm_model.BaseModule):
        def __init__(self):
            super().__init__(init_cfg=dict(type="NoSuchInit"))
            self.fc = nn.Linear(2, 2)

    with wim.installed():
        m = Bad()
        before = m.fc.weight.detach().clone()
        with pytest.raises(wi.UnknownTypeError, match="'NoSuchInit' is not in the weight "
                                                      "initializer registry"):
            m.init_weights()
    assert torch.equal(m.fc.weight, before) and not m.is_init


def test_swin_override_reads_its_own_checkpoint_config(tmp_path: Path):
    """MMSegmentation's Swin loads init_cfg['checkpoint'] itself and strips 'backbone.':
    weightinit must not validate that config as its own Pretrained rule."""
    mm, ours = build("upernet-swin", 0), build("upernet-swin", 0)
    state = {f"backbone.{k}": torch.randn_like(v) if v.is_floating_point() else v
             for k, v in mm.backbone.state_dict().items()}
    file = tmp_path / "swin.pth"
    torch.save({"state_dict": state}, file)
    for m in (mm, ours):
        m.backbone.init_cfg["checkpoint"] = str(file)
    mm.init_weights()
    with wim.installed():
        ours.init_weights()
    for k, v in ours.backbone.state_dict().items():
        assert torch.equal(v, mm.backbone.state_dict()[k]), k
    qkv = "backbone.stages.0.blocks.0.attn.w_msa.qkv.weight"
    assert torch.equal(dict(ours.named_parameters())[qkv], state[qkv])
    info = wi.get_init_record(ours)[qkv].info
    assert info == "load_state_dict(strict=False, assign=False) in SwinTransformer.init_weights"


@pytest.mark.parametrize("name", ["deit-s", "beit", "resnet50"])
def test_deferred_real_model_equals_eager(name: str, tmp_path: Path):
    eager = build(name, 0)
    localize_checkpoints(eager, tmp_path)
    with wim.installed():
        with wi.deferred():
            lazy = build(name, 0)
        localize_checkpoints(lazy, tmp_path)
        assert all(p.device.type == "meta" for p in lazy.parameters())
        torch.manual_seed(1)
        eager.init_weights()
        torch.manual_seed(2)
        lazy.init_weights()
    a, b = dict(eager.named_parameters()), dict(lazy.named_parameters())
    record = wi.get_init_record(lazy)
    for n, p in b.items():
        assert p.device.type == "cpu", n
        if a[n].numel() > 1 and a[n].min() == a[n].max():
            assert torch.equal(p, a[n]), (n, record[n].info)
        elif a[n].numel() >= 64:
            assert close_in_distribution(p, a[n]), (n, record[n].info)
        if record[n].kind in ("rule", "pretrained"):
            assert p._version == 1, (n, p._version)


@pytest.mark.parametrize("name", ["deit-s", "beit", "resnet50", "setr-mla"])
def test_match_eager_real_model_equals_the_eager_one_value_for_value(name: str, tmp_path: Path):
    # eager: construction draws every default, then init_weights (rules, user code) draws;
    # deferred(match_eager=True) draws the same numbers in the same order
    with wim.installed():
        eager = build(name, 0)
        localize_checkpoints(eager, tmp_path)
        eager.init_weights()
        after_eager = torch.rand(4)
        with wi.deferred(match_eager=True):
            lazy = build(name, 0)
        localize_checkpoints(lazy, tmp_path)
        lazy.init_weights()
        assert torch.equal(after_eager, torch.rand(4))
    a, b = dict(eager.named_parameters()), dict(lazy.named_parameters())
    assert a.keys() == b.keys()
    record = wi.get_init_record(lazy)
    for n, p in b.items():
        assert torch.equal(p, a[n]), (n, record[n].info)


class Broken(mm_model.BaseModule):
    def __init__(self):
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=3.0))
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def init_weights(self):
        super().init_weights()
        nn.init.orthogonal_(self.a.weight)
        self.b.weight.data.mul_(2)
        raise ValueError("user code failed")


def test_failure_in_mmengine_user_code_restores_the_model():
    with wim.installed():
        m = Broken()
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        with pytest.raises(ValueError, match="user code failed"):
            m.init_weights()
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not m.is_init and wi.get_init_record(m) is None


class ConvBase(nn.Conv2d):
    pass


class DeepConv(ConvBase):  # Conv2d is not a direct base: MMEngine's layer='Conv2d' skips it
    pass


class Layers(mm_model.BaseModule):
    def __init__(self):
        super().__init__(init_cfg=dict(type="Constant", layer="Conv2d", val=2.0))
        self.near = ConvBase(2, 2, 1)
        self.deep = DeepConv(2, 2, 1)


def test_layer_matching_is_mmengines_under_the_bridge():
    mm = Layers()
    deep_before = mm.deep.weight.detach().clone()
    mm.init_weights()
    assert torch.all(mm.near.weight == 2.0) and torch.equal(mm.deep.weight, deep_before)
    with wim.installed():
        ours = Layers()
        deep_before = ours.deep.weight.detach().clone()
        ours.init_weights()
    assert torch.all(ours.near.weight == 2.0) and torch.equal(ours.deep.weight, deep_before)
    # weightinit's own rule (the whole inheritance chain) is back after uninstall
    net = nn.Sequential(DeepConv(2, 2, 1))
    wi.initialize(net, dict(type="Constant", layer="Conv2d", val=3.0))
    assert torch.all(net[0].weight == 3.0)
