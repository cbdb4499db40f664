"""SPEC B7: the health check flags exploding and vanishing signal, and plots it."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.health import (
    HealthCheckError,
    LayerStats,
    PlotError,
    _judge,
    _std,
    check_health,
    plot_health,
    random_input,
    trend_gain,
)


def mlp(act: type[nn.Module], init_cfg, depth: int = 20, width: int = 256) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    model = nn.Sequential(*layers)
    wi.initialize(model, init_cfg)
    return model


def run(act, init_cfg, label="mlp"):
    return check_health(mlp(act, init_cfg), random_input([64, 256]), label=label)


def test_std_one_on_a_deep_relu_mlp_explodes():
    res = run(nn.ReLU, dict(type="Normal", layer="Linear", std=1.0))
    assert res.flagged
    # Each layer multiplies the signal by about sqrt(256 / 2): ~1e21 over 20 layers.
    assert res.act_gain > 1e15 and res.grad_gain > 1e15
    assert res.problems[0].startswith("exploding activations: std grows ×")
    assert res.problems[0].endswith("over 21 layers, from '<input>' to '38' (limit ×100)")
    assert res.problems[1].startswith("exploding gradients: std grows ×")
    assert res.problems[1].endswith("over 21 layers, from '38' back to '<input>' (limit ×100)")
    assert res.verdict().startswith("mlp: FLAGGED — exploding activations")


def test_a_tiny_std_vanishes():
    res = run(nn.ReLU, dict(type="Normal", layer="Linear", std=1e-3))
    assert res.flagged
    assert res.act_gain < 1e-20 and res.grad_gain < 1e-20
    assert [p.split(":")[0] for p in res.problems] == ["vanishing activations",
                                                       "vanishing gradients"]


@pytest.mark.parametrize("act, init_cfg", [
    (nn.ReLU, dict(type="Kaiming", layer="Linear", mode="fan_in", nonlinearity="relu")),
    (nn.ReLU, dict(type="Kaiming", layer="Linear", mode="fan_out", distribution="uniform")),
    (nn.SELU, dict(type="LeCunNormal", layer="Linear")),
    (nn.Tanh, dict(type="LeCunNormal", layer="Linear")),
])
def test_good_inits_are_not_flagged(act, init_cfg):
    res = run(act, init_cfg)
    assert not res.flagged, res.problems
    assert 0.1 < res.act_gain < 10 and 0.1 < res.grad_gain < 10
    assert res.verdict().startswith("mlp: ok — activation gain ")


def test_per_layer_statistics_in_forward_order():
    res = run(nn.ReLU, dict(type="Kaiming", layer="Linear", mode="fan_in"))
    assert [s.name for s in res.layers] == ["<input>"] + [str(i) for i in range(0, 40, 2)]
    assert [s.type for s in res.layers[:2]] == ["input", "Linear"]
    assert res.layers[0].act_std == pytest.approx(1.0, rel=0.05)  # the N(0, 1) input
    # The N(0, 1) output gradient passes the last ReLU, which zeroes half of it.
    assert res.layers[-1].grad_std == pytest.approx(0.5 ** 0.5, rel=0.05)
    for s in res.layers[1:]:
        assert 0.3 < s.act_std < 3 and 0.3 < s.grad_std < 3
    data = res.to_dict()
    assert list(data) == ["label", "flagged", "problems", "act_gain", "grad_gain", "limit",
                          "layers"]
    assert data["layers"][1] == {"name": "0", "type": "Linear", "act_std": res.layers[1].act_std,
                                 "grad_std": res.layers[1].grad_std}


def test_the_limit_is_configurable():
    model = mlp(nn.Tanh, dict(type="LeCunNormal", layer="Linear"))
    x = random_input([64, 256])
    assert not check_health(model, x).flagged
    res = check_health(model, x, limit=2.0)  # tanh slowly shrinks the signal: ~×0.16
    assert res.flagged and res.problems[0].startswith("vanishing activations")
    with pytest.raises(wi.InitError, match="limit must be a number > 1"):
        check_health(model, x, limit=1)


def test_non_finite_signal_is_flagged():
    model = mlp(nn.ReLU, dict(type="Constant", layer="Linear", val=1e30), depth=3, width=8)
    res = check_health(model, random_input([4, 8]))
    assert res.flagged and res.problems[0] == "non-finite activations from '2' on"


def test_std_of_huge_signal_does_not_overflow():
    x = torch.arange(10, dtype=torch.float32) * 1e25  # its square overflows float32
    assert _std(x).item() == pytest.approx(1e25 * torch.arange(10.0).std().item(), rel=1e-5)
    assert _std(torch.zeros(4)).item() == 0.0
    assert not torch.isfinite(_std(torch.tensor([1.0, float("inf")])))


def test_judge_edge_cases():
    dead = [LayerStats("a", "Linear", 0.0, 1.0), LayerStats("b", "Linear", 0.0, 1.0)]
    assert _judge("m", dead, 100).problems == ["no signal: every layer's output is constant"]
    nograd = [LayerStats("a", "Linear", 1.0, 0.0), LayerStats("b", "Linear", 1.0, 0.0)]
    assert _judge("m", nograd, 100).problems == ["no gradient: every layer's gradient is zero"]
    single = _judge("m", [LayerStats("a", "Linear", 1.0, None)], 100)
    assert not single.flagged and single.act_gain is None and single.grad_gain is None


def test_trend_gain_fits_the_growth_over_depth():
    assert trend_gain([2.0 ** i for i in range(11)]) == pytest.approx(1024.0)
    assert trend_gain([1.0, None, 0.0, 4.0]) == pytest.approx(4.0)  # unusable rows left out
    assert trend_gain([1.0]) is None and trend_gain([0.0, float("nan")]) is None
    # One layer of a deliberately different scale (a std=0.01 head at the end) does not move it
    # (the median pairwise slope), where last/first would read ×0.01.
    flat = [1.0] * 30 + [0.01]
    assert trend_gain(flat) == pytest.approx(1.0)
    assert trend_gain([1.0, 1.0, 1.0, 1.0, 1e-4]) == pytest.approx(1.0)  # even when shallow
    assert trend_gain([1e300, 1e-300] * 2 + [1e300]) < float("inf")


def test_a_small_head_or_a_zero_initialized_norm_is_not_flagged():
    torch.manual_seed(0)
    blocks = []
    for _ in range(10):
        blocks += [nn.Linear(64, 64), nn.ReLU()]
    model = nn.Sequential(*blocks, nn.LayerNorm(64), nn.Linear(64, 1000))
    wi.initialize(model, [dict(type="Kaiming", layer="Linear", mode="fan_in"),
                          dict(type="Zeros", layer="LayerNorm"),
                          dict(type="Normal", std=0.01, override=dict(name="21"))])
    res = check_health(model, random_input([32, 64]))
    assert model[20].weight.abs().max() == 0 and not res.flagged, res.problems


def test_token_input_starts_at_the_embedding_and_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.LayerNorm(16), nn.Linear(16, 16),
                          nn.BatchNorm1d(8), nn.Linear(16, 4))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = check_health(model, random_input([2, 8], "long", high=50))
    assert [s.name for s in res.layers] == ["0", "1", "2", "3", "4"]
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics restored


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(HealthCheckError, match=r"health check: Linear failed on random input of "
                                               r"shape \(2, 3\): .* Fix: give the input shape"):
        check_health(nn.Linear(4, 4), random_input([2, 3]))


def test_random_input_is_seeded_and_validated():
    assert torch.equal(random_input([3, 4], seed=1), random_input([3, 4], seed=1))
    assert not torch.equal(random_input([3, 4], seed=1), random_input([3, 4], seed=2))
    ids = random_input([100], "long", high=7)
    assert ids.dtype == torch.int64 and 0 <= ids.min() and ids.max() < 7
    assert random_input([2], float_dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(wi.InitError, match="input shape must be a list of positive ints"):
        random_input([0, 3])
    with pytest.raises(wi.InitError, match="integer input needs high"):
        random_input([3], "long")


def test_plot_compares_several_configs_in_one_png(tmp_path):
    good = run(nn.ReLU, dict(type="Kaiming", layer="Linear", mode="fan_in"), "kaiming")
    bad = run(nn.ReLU, dict(type="Normal", layer="Linear", std=1.0), "std=1")
    path = tmp_path / "check.png"
    plot_health([good, bad], str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < len(data) < 200_000


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    res = _judge("m", [LayerStats("a", "Linear", 1.0, 1.0)], 100)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(PlotError, match=r"plotting needs matplotlib, which is not installed. Fix: "
                                        r"pip install 'weightinit\[plot\]'") as info:
        plot_health([res], str(tmp_path / "x.png"))
    assert isinstance(info.value, ImportError) and isinstance(info.value, wi.InitError)
