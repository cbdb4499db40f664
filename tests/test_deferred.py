"""SPEC B3: deferred construction, then materialization that writes each tensor once."""

from __future__ import annotations

import math
import resource
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import weightinit as wi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import models  # noqa: E402


def plain_stack() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.Conv2d(3, 8, 3), nn.Embedding(50, 8),
                         nn.LayerNorm(8), nn.BatchNorm2d(8), nn.MultiheadAttention(8, 2),
                         nn.Embedding(20, 8, padding_idx=3))


def test_construction_allocates_nothing_and_records_defaults():
    with wi.deferred():
        m = plain_stack()
    assert all(p.is_meta for p in m.parameters())
    assert not m[4].running_mean.is_meta  # buffers computed for real
    p = wi.plan(m, [])
    assert p["0.weight"].owner_info == "PyTorch default (constructor: kaiming_uniform_)"
    assert p["2.weight"].owner_info == "PyTorch default (constructor: normal_)"
    assert p["3.weight"].owner_info == "PyTorch default (constructor: ones_)"


def test_defaults_replay_exactly_pytorch_init():
    torch.manual_seed(123)
    eager = plain_stack()
    torch.manual_seed(123)
    with wi.deferred():
        lazy = plain_stack()
    wi.initialize(lazy, [])
    eager_sd, lazy_sd = eager.state_dict(), lazy.state_dict()
    assert eager_sd.keys() == lazy_sd.keys()
    for k in eager_sd:
        assert torch.equal(eager_sd[k], lazy_sd[k]), k
    assert all(not p.is_meta for p in lazy.parameters())


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos = nn.Parameter(torch.empty(1, 50, 8))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.ramp = nn.Parameter(torch.arange(8.0))
        self.gamma = nn.Parameter(torch.empty(8))
        self.gamma.data.fill_(0.1)
        self.grid = nn.Parameter(torch.zeros(4, 4))
        self.grid.data[0] = 1.0
        self.cols = nn.Parameter(torch.empty(2, 3))
        first, second = self.cols.data.t().unbind(1)  # writes through views of views
        first.fill_(1.0)
        second.fill_(2.0)
        self.register_buffer("mask", torch.tril(torch.ones(4, 4)))
        self.register_buffer("filled", torch.empty(3))
        self.filled.fill_(2.0)
        self.embed = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight  # tied


def test_custom_parameters_buffers_and_ties():
    torch.manual_seed(0)
    eager = Custom()
    with wi.deferred():
        lazy = Custom()
    assert lazy.head.weight is lazy.embed.weight
    rec = wi.initialize(lazy, dict(type="Normal", layer="Embedding", std=0.5))
    assert lazy.head.weight is lazy.embed.weight and not lazy.head.weight.is_meta
    for name in ("cls_token", "ramp", "gamma", "grid", "cols", "mask", "filled"):
        assert torch.equal(getattr(lazy, name), getattr(eager, name)), name
    assert lazy.pos.abs().max() <= 2 * 0.02 * 10 and abs(lazy.pos.std().item() - 0.02) < 0.004
    assert abs(lazy.embed.weight.std().item() - 0.5) < 0.1
    assert rec["embed.weight"].info == "NormalInit: mean=0, std=0.5, bias=0"
    assert rec["pos"].declared_in == "PyTorch default (constructor: trunc_normal_)"
    assert rec["grid"].declared_in == "PyTorch default (constructor: value, __setitem__)"


class Undefined(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.empty(4))


def test_undefined_parameter_is_an_error_before_allocation():
    with wi.deferred():
        m = Undefined()
    with pytest.raises(wi.UndefinedParameterError) as err:
        wi.initialize(m, [])
    assert "scale (its constructor creates it with torch.empty and never writes it)" in str(
        err.value)
    assert "Nothing was allocated" in str(err.value)
    assert all(p.is_meta for p in m.parameters())
    with pytest.raises(wi.UndefinedParameterError, match="Nothing was allocated"):
        wi.plan(m, [])  # the dry run raises what the run raises
    assert wi.plan(m, [], allow_undefined=True).undefined == (
        ("scale", "its constructor creates it with torch.empty and never writes it"),)


def test_undefined_parameter_covered_by_a_rule_is_fine():
    class Gain(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(4))

    with wi.deferred():
        m = nn.Sequential(Gain(), nn.Linear(4, 4))
    wi.initialize(m, dict(type="Constant", layer="Gain", val=3))
    assert torch.all(m[0].weight == 3)


def test_undefined_parameter_left_to_user_init_weights():
    class Writes(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.empty(4))

        def init_weights(self):
            nn.init.ones_(self.scale)

    class Forgets(Writes):
        def init_weights(self):
            pass

    class Top(wi.BaseModule):
        def __init__(self, child):
            super().__init__()
            self.child = child

    with wi.deferred():
        good, bad = Top(Writes()), Top(Forgets())
    good.init_weights()
    assert torch.all(good.child.scale == 1)
    with pytest.raises(wi.UndefinedParameterError, match="child.scale have no defined value"):
        bad.init_weights()


@pytest.mark.parametrize("build", [models.resnet50, models.vit_b16,
                                   lambda kit=None: models.transformer(kit, depth=3, dim=64),
                                   lambda kit=None: models.llama(kit, size="tiny",
                                                                 tie_embeddings=True)])
def test_examples_deferred_equal_eager(build):
    torch.manual_seed(0)
    eager = build()
    eager.init_weights()
    with wi.deferred():
        lazy = build()
    lazy.init_weights()
    re, rl = eager.init_record, lazy.init_record
    assert re.params.keys() == rl.params.keys()
    for name in re.params:
        assert (re[name].kind, re[name].info) == (rl[name].kind, rl[name].info), name
        assert rl[name].device == "cpu"
    se, sl = eager.state_dict(), lazy.state_dict()
    for k, a in se.items():
        b = sl[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        if a.numel() < 2 or not a.is_floating_point() or a.std() == 0 or "cls_token" in k:
            assert torch.equal(a, b), k  # deterministic: constants, buffers, values
        else:
            n = a.numel()
            tol = 6 * a.std().item() / math.sqrt(n)
            assert abs(a.mean().item() - b.mean().item()) < 2 * tol + 1e-7, k
            assert abs(a.std().item() - b.std().item()) < 6 * a.std().item() / math.sqrt(n) + \
                0.02 * a.std().item(), k


@pytest.mark.parametrize("build", [models.resnet50, lambda: models.llama(size="tiny")])
def test_deferred_writes_each_parameter_once(build):
    with wi.deferred():
        m = build()
    m.init_weights()
    for name, p in m.named_parameters():
        assert p._version == 1, (name, p._version)


def test_pretrained_under_deferred_is_loaded_not_drawn(tmp_path):
    torch.manual_seed(0)
    src = models.llama(size="tiny")
    src.init_weights()
    path = tmp_path / "llama.pth"
    torch.save({f"model.{k}": v for k, v in src.state_dict().items()
                if k.startswith("layers.0.")}, path)

    class Tuned(wi.BaseModule):
        def __init__(self):
            super().__init__(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
            self.model = models.llama(size="tiny")

    with wi.deferred():
        m = Tuned()
    m.init_weights()
    p = m.model.layers[0].q_proj.weight
    assert torch.equal(p, src.layers[0].q_proj.weight) and p._version == 1
    assert m.init_record["model.layers.0.q_proj.weight"].kind == "pretrained"
    assert m.init_record["model.layers.1.q_proj.weight"].info.startswith("NormalInit")


def test_dtype_and_buffers():
    with wi.deferred():
        m = models.resnet50()
    m.init_weights(dtype=torch.bfloat16)
    bn = m.backbone.bn1
    assert m.backbone.conv1.weight.dtype == torch.bfloat16
    assert bn.running_mean.dtype == torch.bfloat16 and torch.all(bn.running_var == 1)
    assert bn.num_batches_tracked.dtype == torch.long
    with wi.deferred():
        m = models.vit_b16(depth=1)
    m.init_weights(dtype=torch.float64)
    assert m.blocks[0].mlp.fc1.weight.dtype == torch.float64
    assert m.blocks[0].mlp.fc1.weight.abs().max() <= 2
    with pytest.raises(wi.InitTypeError, match="dtype must be a floating torch.dtype"):
        models.resnet50().init_weights(dtype=torch.int32)


def test_meta_device_model_without_deferred_uses_reset_parameters():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64))
    rec = wi.initialize(m, dict(type="Constant", layer="LayerNorm", val=2))
    assert torch.all(m[1].weight == 2)
    bound = 1 / math.sqrt(64)
    assert m[0].weight.abs().max() <= bound and m[0].weight.std() > bound / 3
    assert rec["0.weight"].declared_in == "PyTorch default (reset_parameters of Linear)"


def test_plan_of_a_deferred_7b_model_allocates_nothing():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with wi.deferred():
        m = models.llama(size="7b")
    p = wi.plan(m)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    n = sum(e.numel() for e in m.parameters())
    assert n > 6.5e9 and all(t.is_meta for t in m.parameters())
    assert grown_mib < 256  # 27 GB of float32 parameters were never allocated
    assert p["layers.31.down_proj.weight"].owner_info == "NormalInit: mean=0, std=0.0025, bias=0"
    assert p.undefined == ()


def test_device_only_on_outermost_call():
    class Inner(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

    class Middle(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def init_weights(self):
            self.inner.init_weights(device="cpu")

    class Top(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.middle = Middle()

    with pytest.raises(wi.InitTypeError, match="only be given to the outermost"):
        Top().init_weights()


def test_constructions_kept_on_modules_are_dropped_once_materialized():
    # deferred() notes each parameter's construction on its module (so it survives
    # sharding); computed values in it must not outlive materialization.
    with wi.deferred():
        m = nn.Sequential(nn.Linear(4, 4))
        m.register_parameter("big", nn.Parameter(torch.randn(64, 64)))
    assert set(m.__dict__["_wi_constructions"]) == {"big"}
    assert set(m[0].__dict__["_wi_constructions"]) == {"weight", "bias"}
    wi.initialize(m, [])
    assert all("_wi_constructions" not in mod.__dict__ for mod in m.modules())
    assert m.big.device.type == "cpu" and m.big.std() > 0.5
