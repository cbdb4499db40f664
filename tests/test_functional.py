"""The maths: module-level init functions and tensor fills."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit import maths as F


def _stats_ok(t: torch.Tensor, mean: float, std: float, k: float = 5.0) -> None:
    # Sample mean within k standard errors; sample std within k·std/√(2n).
    n = t.numel()
    assert abs(t.mean().item() - mean) < k * std / math.sqrt(n)
    assert abs(t.std().item() - std) < k * std / math.sqrt(2 * n)


def test_constant_init_fills_weight_and_bias():
    m = nn.Conv2d(3, 4, 3)
    wi.constant_init(m, 0.5, bias=-1)
    assert torch.all(m.weight == 0.5) and torch.all(m.bias == -1)


def test_constant_init_skips_missing_bias():
    m = nn.Linear(3, 4, bias=False)
    wi.constant_init(m, 2)
    assert torch.all(m.weight == 2) and m.bias is None


def test_normal_init_statistics():
    torch.manual_seed(0)
    m = nn.Linear(1000, 500)
    wi.normal_init(m, mean=0.5, std=0.1, bias=3)
    _stats_ok(m.weight, 0.5, 0.1)
    assert torch.all(m.bias == 3)


def test_uniform_init_bounds_and_statistics():
    torch.manual_seed(0)
    m = nn.Linear(1000, 500)
    wi.uniform_init(m, a=-1, b=3)
    assert m.weight.min() >= -1 and m.weight.max() <= 3
    _stats_ok(m.weight, 1.0, 4 / math.sqrt(12))


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_xavier_init_std(distribution):
    torch.manual_seed(0)
    m = nn.Linear(600, 400)
    wi.xavier_init(m, gain=2, distribution=distribution)
    _stats_ok(m.weight, 0.0, 2 * math.sqrt(2 / 1000))


@pytest.mark.parametrize("mode,fan", [("fan_in", 64 * 9), ("fan_out", 128 * 9)])
@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_kaiming_init_std(mode, fan, distribution):
    torch.manual_seed(0)
    m = nn.Conv2d(64, 128, 3)
    wi.kaiming_init(m, mode=mode, distribution=distribution, bias=0.25)
    _stats_ok(m.weight, 0.0, math.sqrt(2 / fan))
    assert torch.all(m.bias == 0.25)


def test_kaiming_default_mode_is_fan_out():
    torch.manual_seed(0)
    m = nn.Linear(1000, 100)  # fan_in 1000, fan_out 100
    wi.kaiming_init(m)
    _stats_ok(m.weight, 0.0, math.sqrt(2 / 100))


def test_caffe2_xavier_is_kaiming_uniform_fan_in_a1():
    torch.manual_seed(0)
    m = nn.Conv2d(32, 64, 3)
    wi.caffe2_xavier_init(m)
    bound = math.sqrt(3) * 1 / math.sqrt(32 * 9)  # gain(leaky_relu, 1) = 1
    assert m.weight.abs().max() <= bound
    _stats_ok(m.weight, 0.0, bound / math.sqrt(3))


def test_bias_init_with_prob_value():
    assert wi.bias_init_with_prob(0.01) == pytest.approx(-math.log(99))
    assert wi.bias_init_with_prob(0.5) == 0.0


@pytest.mark.parametrize("bad", [0, 1, -0.2, 1.5])
def test_bias_init_with_prob_rejects_out_of_range(bad):
    with pytest.raises(wi.InitValueError, match=r"prior_prob must be in \(0, 1\)"):
        wi.bias_init_with_prob(bad)


@pytest.mark.parametrize("call,match", [
    (lambda m: wi.xavier_init(m, distribution="gaussian"), "distribution must be one of"),
    (lambda m: wi.kaiming_init(m, distribution="gaussian"), "distribution must be one of"),
    (lambda m: wi.kaiming_init(m, mode="fan_avg"), "mode must be one of 'fan_in', 'fan_out'"),
    (lambda m: wi.kaiming_init(m, nonlinearity="swish"), "nonlinearity must be one of"),
])
def test_bad_choices_are_value_errors_naming_allowed_values(call, match):
    m = nn.Linear(4, 4)
    before = m.weight.clone()
    with pytest.raises(wi.DistributionError, match=match) as err:
        call(m)
    assert isinstance(err.value, ValueError) and isinstance(err.value, wi.InitError)
    assert torch.equal(m.weight, before)


def test_fans_of_conv_and_linear():
    assert F.fan_in_and_fan_out((64, 3, 7, 7)) == (147, 3136)
    assert F.fan_in_and_fan_out((10, 20)) == (20, 10)
    with pytest.raises(wi.ShapeError, match="fewer than 2 dimensions"):
        F.fan_in_and_fan_out((5,))


def test_trunc_normal_stays_in_bounds_with_frequent_rejections():
    torch.manual_seed(0)
    t = torch.empty(200_000)
    wi.trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0)
    assert t.min() >= -2 and t.max() <= 2
    # Truncated standard normal on [-2, 2]: variance 1 - 2·2·φ(2)/(Φ(2)-Φ(-2)).
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    std = math.sqrt(1 - 4 * phi2 / mass)
    _stats_ok(t, 0.0, std)


def test_trunc_normal_small_std_matches_normal():
    torch.manual_seed(1)
    t = torch.empty(500, 400)
    wi.trunc_normal_(t, std=0.02)
    _stats_ok(t, 0.0, 0.02)


def test_trunc_normal_asymmetric_bounds_low_mass_uses_exact_fallback():
    torch.manual_seed(2)
    t = torch.empty(100_000)
    wi.trunc_normal_(t, mean=0.0, std=1.0, a=1.0, b=1.5)  # ~9% of the mass
    assert t.min() >= 1.0 and t.max() <= 1.5
    # The truncated density decreases on [1, 1.5]: mean below the midpoint.
    assert 1.0 < t.mean().item() < 1.25


def test_trunc_normal_non_contiguous_and_half_precision():
    torch.manual_seed(3)
    base = torch.zeros(300, 400)
    view = base.t()  # non-contiguous
    wi.trunc_normal_(view, std=1.0, a=-1.0, b=1.0)
    assert base.abs().max() <= 1.0 and (base != 0).float().mean() > 0.99
    half = torch.empty(50_000, dtype=torch.bfloat16)
    wi.trunc_normal_(half, std=1.0)
    assert half.min() >= -2 and half.max() <= 2


def test_trunc_normal_rejects_bad_arguments():
    with pytest.raises(wi.InitValueError, match="std must be > 0"):
        wi.trunc_normal_(torch.empty(3), std=0)
    with pytest.raises(wi.InitValueError, match="need a < b"):
        wi.trunc_normal_(torch.empty(3), a=1, b=1)


def test_trunc_normal_init_module():
    torch.manual_seed(0)
    m = nn.Linear(300, 300)
    wi.trunc_normal_init(m, std=0.5, a=-0.5, b=0.5, bias=1)
    assert m.weight.abs().max() <= 0.5 and torch.all(m.bias == 1)
