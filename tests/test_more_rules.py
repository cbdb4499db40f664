"""SPEC B5: VarianceScaling and its presets, new rules, parameter targeting, LSUV, user rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit import maths as F


def stats_ok(t: torch.Tensor, std: float, k: float = 5.0) -> None:
    n = t.numel()
    assert abs(t.mean().item()) < k * std / math.sqrt(n)
    assert abs(t.std().item() - std) < k * std / math.sqrt(2 * n) + 0.01 * std


# ------------------------------------------------------------------ fans


@pytest.mark.parametrize("module,fans", [
    (nn.Linear(30, 20), (30, 20)),
    (nn.Conv1d(4, 6, 5), (20, 30)),
    (nn.Conv2d(4, 6, 3), (36, 54)),
    (nn.Conv3d(4, 6, 3), (108, 162)),
    (nn.Conv2d(8, 16, 3, groups=4), (18, 36)),  # each input feeds 16/4 outputs x 9
    (nn.ConvTranspose2d(8, 12, 3, groups=2), (36, 54)),  # weight (8, 6, 3, 3)
    (nn.Embedding(1000, 64), (1, 64)),
])
def test_module_aware_fans(module, fans):
    assert F.fan_in_and_fan_out(tuple(module.weight.shape), module) == fans


def test_torch_fans_without_module_ignore_groups():
    conv = nn.Conv2d(8, 16, 3, groups=4)
    assert F.fan_in_and_fan_out(tuple(conv.weight.shape)) == (18, 144)


# ------------------------------------------------------------------ VarianceScaling


@pytest.mark.parametrize("mode,n", [("fan_in", 512), ("fan_out", 256), ("fan_avg", 384)])
@pytest.mark.parametrize("distribution", ["truncated_normal", "normal", "uniform"])
def test_variance_scaling_std(mode, n, distribution):
    torch.manual_seed(0)
    m = nn.Linear(512, 256)
    wi.initialize(m, dict(type="VarianceScaling", layer="Linear", scale=2.0, mode=mode,
                          distribution=distribution))
    std = math.sqrt(2.0 / n)
    stats_ok(m.weight, std)
    if distribution == "truncated_normal":
        assert m.weight.abs().max() <= 2 * std / 0.87962566103423978
    if distribution == "uniform":
        assert m.weight.abs().max() <= math.sqrt(3) * std


def test_variance_scaling_uses_grouped_conv_fans():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 256, 3, groups=8)  # fan_out = 256/8 * 9 = 288
    wi.initialize(conv, dict(type="VarianceScaling", layer="Conv2d", mode="fan_out",
                             distribution="normal"))
    stats_ok(conv.weight, math.sqrt(1 / 288))


def test_embedding_fan_in_is_one():
    torch.manual_seed(0)
    emb = nn.Embedding(2000, 64)
    wi.initialize(emb, dict(type="VarianceScaling", layer="Embedding", mode="fan_out",
                            distribution="normal"))
    stats_ok(emb.weight, 1 / 8)


def test_presets_are_variance_scaling():
    shape = (256, 128, 3, 3)
    assert F.xavier_std(shape, 2.0) == pytest.approx(F.variance_scaling_std(shape, 4.0, "fan_avg"))
    assert F.kaiming_std(shape, 0, "fan_out", "relu") == pytest.approx(
        F.variance_scaling_std(shape, 2.0, "fan_out"))
    torch.manual_seed(0)
    m = nn.Linear(400, 300)
    wi.initialize(m, dict(type="LeCunNormal", layer="Linear"))
    stats_ok(m.weight, math.sqrt(1 / 400))
    assert m.weight.abs().max() <= 2 * math.sqrt(1 / 400) / 0.87962566103423978
    wi.initialize(m, dict(type="LeCunUniform", layer="Linear"))
    assert m.weight.abs().max() <= math.sqrt(3 / 400)
    stats_ok(m.weight, math.sqrt(1 / 400))


def test_variance_scaling_bad_arguments():
    with pytest.raises(wi.DistributionError, match="mode must be one of"):
        wi.VarianceScalingInit(mode="fan")
    with pytest.raises(wi.DistributionError, match="'truncated_normal', 'normal', 'uniform'"):
        wi.VarianceScalingInit(distribution="gamma")
    with pytest.raises(wi.InitValueError, match="scale must be > 0"):
        wi.VarianceScalingInit(scale=0)


# ------------------------------------------------------------------ new rules


def test_orthogonal_with_gain():
    m = nn.Linear(64, 32)  # 32 x 64: rows <= cols
    wi.initialize(m, dict(type="Orthogonal", layer="Linear", gain=2.0))
    assert torch.allclose(m.weight @ m.weight.T, 4 * torch.eye(32), atol=1e-4)
    conv = nn.Conv2d(16, 8, 3)
    wi.initialize(conv, dict(type="Orthogonal", layer="Conv2d"))
    w = conv.weight.reshape(8, -1)
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-4)


def test_dirac_is_identity_conv_and_follows_groups():
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=2)
    wi.initialize(conv, dict(type="Dirac", layer="Conv2d"))
    x = torch.randn(2, 6, 5, 5)
    assert torch.allclose(conv(x), x, atol=1e-6)
    with pytest.raises(wi.ShapeError, match="Dirac needs a conv weight with 3 to 5 dimensions"):
        wi.initialize(nn.Linear(3, 3), dict(type="Dirac", layer="Linear"))


def test_eye_zeros_ones_exact():
    net = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 5, bias=False))
    wi.initialize(net, [dict(type="Eye", layer="Linear", bias=0.5),
                        dict(type="Zeros", override=dict(name="1")),
                        dict(type="Ones", param="2.weight")])
    assert torch.equal(net[0].weight, torch.eye(5, 3)) and torch.all(net[0].bias == 0.5)
    assert torch.all(net[1].weight == 0) and torch.all(net[1].bias == 0)
    assert torch.all(net[2].weight == 1)
    with pytest.raises(wi.ShapeError, match="Eye needs a 2-D weight"):
        wi.initialize(nn.Conv2d(2, 2, 3), dict(type="Eye", layer="Conv2d"))


def test_tf_trunc_normal_bounds_in_std_units():
    torch.manual_seed(0)
    m = nn.Linear(500, 400)
    wi.initialize(m, dict(type="TFTruncNormal", layer="Linear", mean=1.0, std=0.5, a=-1, b=1))
    assert m.weight.min() >= 0.5 and m.weight.max() <= 1.5
    assert abs(m.weight.mean().item() - 1.0) < 0.005


def test_default_restores_pytorch_init():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 128), nn.LayerNorm(128))
    rec = wi.initialize(net, [dict(type="Constant", layer=["Linear", "LayerNorm"], val=7),
                              dict(type="Default", layer=["Linear", "LayerNorm"])])
    bound = 1 / math.sqrt(256)
    assert net[0].weight.abs().max() <= bound and net[0].weight.std() > bound / 3
    assert torch.all(net[1].weight == 1) and torch.all(net[1].bias == 0)
    assert rec["0.bias"].info == "DefaultInit: reset_parameters()"
    with pytest.raises(wi.InitTypeError, match="ReLU has no reset_parameters"):
        wi.initialize(nn.Sequential(nn.ReLU()), dict(type="Default", layer="ReLU"))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)


def test_zero_init_residual_last_norm_or_pattern():
    net = nn.Sequential(Block(), Block())
    wi.initialize(net, dict(type="ZeroInitResidual", layer="Block"))
    for b in net:
        assert torch.all(b.bn2.weight == 0) and torch.all(b.bn1.weight == 1)
    net = nn.Sequential(Block(), Block())
    wi.initialize(net, dict(type="ZeroInitResidual", norm="*.bn1"))
    for b in net:
        assert torch.all(b.bn1.weight == 0) and torch.all(b.bn2.weight == 1)
    with pytest.raises(wi.InitValueError, match="no normalization layer named 'bn9' in Block"):
        wi.initialize(net, dict(type="ZeroInitResidual", layer="Block", norm="bn9"))


# ------------------------------------------------------------------ param targeting


class ViTish(wi.BaseModule):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.pos_embed = nn.Parameter(torch.zeros(1, 10, 16))
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(2))
        for b in self.blocks:
            b.gamma = nn.Parameter(torch.ones(16))


def test_param_patterns_target_custom_parameters():
    torch.manual_seed(0)
    m = ViTish([dict(type="TruncNormal", param=["pos_embed", "cls_token"], std=0.02),
                dict(type="Constant", val=1e-4, param="blocks.*.gamma"),
                dict(type="Constant", val=3, layer="Linear")])
    m.init_weights()
    assert m.pos_embed.abs().max() <= 2 and abs(m.pos_embed.std().item() - 0.02) < 0.005
    assert m.cls_token.std() > 0
    for b in m.blocks:
        assert torch.all(b.gamma == 1e-4) and torch.all(b.weight == 3)
    rec = m.init_record
    assert rec["blocks.1.gamma"].info == "ConstantInit: val=0.0001, bias=0"
    assert rec["pos_embed"].declared_in == "<root> (ViTish) init_cfg[0]"


def test_param_conflicts_follow_last_writer_order():
    m = ViTish([dict(type="Constant", val=1, param="*gamma"),
                dict(type="Constant", val=2, param="blocks.1.gamma")])
    m.init_weights()
    assert torch.all(m.blocks[0].gamma == 1) and torch.all(m.blocks[1].gamma == 2)


def test_param_pattern_errors_leave_model_untouched():
    m = ViTish([dict(type="Constant", val=1, layer="Linear"),
                dict(type="Constant", val=2, param="pos_emb")])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(wi.OverrideTargetError, match="param pattern 'pos_emb' matches no "
                                                     "parameter"):
        m.init_weights()
    m2 = ViTish(dict(type="Kaiming", param="blocks.*.gamma"))
    with pytest.raises(wi.ShapeError, match=r"cannot initialize blocks.0 \(Linear\).gamma"):
        m2.init_weights()
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


# ------------------------------------------------------------------ LSUV


def _layer_stds(net: nn.Module, x: torch.Tensor, kinds: tuple[type, ...]) -> list[float]:
    out = []
    hooks = [m.register_forward_hook(lambda m, i, o: out.append(o.std().item()))
             for m in net.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return out


def test_lsuv_deep_mlp_unit_variance():
    torch.manual_seed(0)
    layers = []
    for _ in range(16):
        layers += [nn.Linear(128, 128), nn.ReLU()]
    net = nn.Sequential(*layers)
    rec = wi.initialize(net, dict(type="LSUV", input_shape=(512, 128), tol=0.05))
    x = torch.randn(512, 128, generator=torch.Generator().manual_seed(0))
    stds = _layer_stds(net, x, (nn.Linear,))
    assert len(stds) == 16 and all(abs(s - 1) <= 0.05 for s in stds), stds
    assert rec["30.weight"].info.startswith("LSUVInit: input_shape=(512, 128), tol=0.05")
    assert rec["30.weight"].kind == "rule"


def test_lsuv_small_cnn_with_batchnorm_restores_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3),
                        nn.Flatten(), nn.Linear(32 * 6 * 6, 10))
    data = torch.randn(64, 3, 8, 8)
    wi.initialize(net, dict(type="LSUV", data=data, tol=0.02))
    # The forward passes LSUV ran must not leave BatchNorm statistics behind.
    assert torch.all(net[1].running_mean == 0) and net[1].num_batches_tracked.item() == 0
    stds = _layer_stds(net, data, (nn.Conv2d, nn.Linear))
    assert all(abs(s - 1) <= 0.02 for s in stds), stds


def test_lsuv_errors():
    class Dead(nn.Module):
        def forward(self, x):
            return x * 0

    net = nn.Sequential(nn.Linear(8, 8), Dead(), nn.Linear(8, 8))
    with pytest.raises(wi.LSUVError, match=r"output of 2 \(Linear\) has std 0.0"):
        wi.initialize(net, dict(type="LSUV", input_shape=(16, 8)))
    with pytest.raises(wi.InitValueError, match="exactly one of input_shape"):
        wi.LSUVInit()
    with pytest.raises(wi.LSUVError, match=r"0 \(Linear\) did not reach output std 5.0±5e-09 within 1 iterations"):
        wi.initialize(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8)),
                      dict(type="LSUV", layer="Linear", input_shape=(16, 8), tol=1e-9,
                           max_iters=1, target_std=5.0))


# ------------------------------------------------------------------ users' own rules


def test_user_rule_plans_records_and_materializes():
    @wi.WEIGHT_INITIALIZERS.register_module(name="Scaled", force=True)
    class ScaledInit(wi.BaseInit):
        arg_names = ("scale",)

        def __init__(self, scale=1.0, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale

        def init_weight(self, tensor):
            tensor.fill_(self.scale / tensor.shape[-1])

    cfg = dict(type="Scaled", layer="Linear", scale=8.0, bias=1)
    assert wi.plan(nn.Linear(4, 2), cfg)["weight"].owner_info == "ScaledInit: scale=8.0, bias=1"
    with wi.deferred():
        net = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    rec = wi.initialize(net, cfg)
    assert torch.all(net[0].weight == 2) and torch.all(net[1].weight == 4)
    assert torch.all(net[0].bias == 1) and net[0].weight._version == 1
    assert rec["1.weight"].kind == "rule"


def test_lsuv_on_a_deferred_model():
    with wi.deferred():
        net = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(32, 32), nn.GELU())])
    wi.initialize(net, dict(type="LSUV", input_shape=(256, 32), tol=0.05))
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    stds = _layer_stds(net, x, (nn.Linear,))
    assert all(abs(s - 1) <= 0.05 for s in stds), stds


def test_orthogonal_in_half_precision_decomposes_in_float32():
    for dtype in (torch.bfloat16, torch.float16):
        with wi.deferred():
            m = nn.Linear(32, 16, bias=False)
        wi.initialize(m, dict(type="Orthogonal", layer="Linear", gain=2.0), dtype=dtype, seed=0)
        w = m.weight.detach()
        assert w.dtype == dtype
        gram = w.float() @ w.float().T  # rows <= cols: W Wᵀ = gain² I, up to rounding
        torch.testing.assert_close(gram, 4 * torch.eye(16), atol=0.1, rtol=0)
