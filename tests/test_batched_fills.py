"""Batched unseeded fills off the CPU, and the truncated normal without host reads.

The batched path and the inverse-CDF truncated normal are what a GPU runs;
here their logic runs on the CPU, with the device decisions
(:func:`weightinit.execution.batched.batch_target`,
:func:`weightinit.maths.fills.sync_free_trunc`) replaced. The tests at the
end need CUDA and are skipped without it.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import weightinit as wi
from weightinit.execution import batched, strategies
from weightinit.maths import Elementwise, fills

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GENERATORS = ("normal_", "uniform_")


class CountOps(TorchDispatchMode):
    """Counts the aten ops run inside it, by overload packet name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def generations(self) -> int:
        return sum(self.calls[name] for name in GENERATORS)


@pytest.fixture
def sync_free(monkeypatch):
    """The truncated normal draws as on a GPU (inverse CDF), here on the CPU."""
    monkeypatch.setattr(fills, "sync_free_trunc", lambda device: True)


@pytest.fixture
def batch_cpu(monkeypatch, sync_free):
    """Unseeded elementwise fills of CPU tensors go through the batched path, and none is
    drawn in pieces on the CPU threads (as on a GPU)."""
    monkeypatch.setattr(batched, "batch_target", lambda t: t.is_floating_point()
                        and t.device.type == "cpu" and type(t) in (torch.Tensor, nn.Parameter))
    monkeypatch.setattr(strategies, "parallel_target", lambda t: False)


def _norm_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def trunc_moments(mean: float, std: float, a: float, b: float) -> tuple[float, float]:
    al, be = (a - mean) / std, (b - mean) / std
    z = _norm_cdf(be) - _norm_cdf(al)
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    m = (pdf(al) - pdf(be)) / z
    var = 1 + (al * pdf(al) - be * pdf(be)) / z - m * m
    return mean + std * m, std * math.sqrt(var)


def ks_trunc(x: torch.Tensor, mean: float, std: float, a: float, b: float) -> float:
    """Kolmogorov-Smirnov distance of the sample ``x`` to the truncated normal."""
    xs = x.double().flatten().sort().values
    n = xs.numel()
    cdf = lambda v: 0.5 * (1 + torch.erf((v - mean) / (std * math.sqrt(2))))  # noqa: E731
    lo, hi = _norm_cdf((a - mean) / std), _norm_cdf((b - mean) / std)
    f = (cdf(xs) - lo) / (hi - lo)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - f).max().item(), (f - (i - 1) / n).max().item())


# -- truncated normal by the inverse CDF ---------------------------------------------------

@pytest.mark.parametrize("mean,std,a,b", [(0.0, 1.0, -2.0, 2.0), (0.5, 2.0, -1.0, 4.0),
                                          (0.0, 0.02, -2.0, 2.0), (1.0, 1.0, 1.5, 3.0)])
def test_inverse_cdf_path_distribution(sync_free, mean, std, a, b):
    torch.manual_seed(0)
    x = torch.empty(400_000)
    with CountOps() as ops:
        wi.trunc_normal_(x, mean, std, a, b)
    assert ops.calls["uniform_"] == 1 and ops.calls["normal_"] == 0
    assert ops.calls["aminmax"] == 0 and ops.calls["nonzero"] == 0
    assert ops.calls["_local_scalar_dense"] == 0  # no .item(): no host read
    assert x.min().item() >= a and x.max().item() <= b
    m, s = trunc_moments(mean, std, a, b)
    assert abs(x.double().mean().item() - m) < 5 * s / math.sqrt(x.numel())
    assert abs(x.double().std().item() / s - 1) < 0.01
    assert ks_trunc(x, mean, std, a, b) < 1.63 / math.sqrt(x.numel())  # 1 % level
    # far bounds (100 std): no value stuck at a bound
    assert not torch.any(x == a) or mean - a < 3 * std


def test_inverse_cdf_bf16_keeps_the_bounds(sync_free):
    torch.manual_seed(1)
    x = torch.empty(200_000, dtype=torch.bfloat16)
    wi.trunc_normal_(x, 0.0, 1.0, -0.5, 0.7)
    assert bool((x >= -0.5).all()) and bool((x <= 0.7).all())
    assert abs(x.float().std().item() / trunc_moments(0.0, 1.0, -0.5, 0.7)[1] - 1) < 0.02


def test_cpu_truncated_normal_is_unchanged():
    assert not fills.sync_free_trunc(torch.device("cpu"))
    assert fills.sync_free_trunc(torch.device("cuda"))
    torch.manual_seed(3)
    x = torch.empty(10_000)
    with CountOps() as ops:
        wi.trunc_normal_(x, 0.0, 1.0, -2.0, 2.0)
    assert ops.calls["normal_"] >= 1 and ops.calls["uniform_"] == 0  # rejection, as before
    torch.manual_seed(3)
    ref = torch.empty(10_000).normal_()
    inside = (ref >= -2) & (ref <= 2)
    assert torch.equal(x[:100][inside[:100]], ref[:100][inside[:100]])


# -- the batched path -----------------------------------------------------------------------

def _tensors(shapes, dtype=torch.float32):
    return [nn.Parameter(torch.full(s, float("nan"), dtype=dtype)) for s in shapes]


@pytest.mark.parametrize("dist,moments", [
    (Elementwise("normal", (0.5, 0.1)), (0.5, 0.1)),
    (Elementwise("uniform", (-1.0, 3.0)), (1.0, 4 / math.sqrt(12))),
    (Elementwise("trunc_normal", (0.0, 1.0, -2.0, 2.0)), trunc_moments(0.0, 1.0, -2.0, 2.0)),
])
def test_a_group_is_one_generation_call(batch_cpu, dist, moments):
    torch.manual_seed(0)
    ts = _tensors([(300, 200), (7,), (64, 3, 3, 3), (1000, 100)])
    with CountOps() as ops:
        batched.draw_group(dist, ts, torch.float32)
    assert ops.generations() == 1
    assert ops.calls["_foreach_copy_"] == 1
    again = _tensors([(3, 2), (7,)])
    batched.draw_group(dist, again, torch.float32)  # (a dispatch mode hides the bump)
    assert [t._version for t in again] == [1, 1]
    big = torch.cat([t.detach().flatten() for t in ts])
    assert torch.isfinite(big).all()
    mean, std = moments
    assert abs(big.double().mean().item() - mean) < 5 * std / math.sqrt(big.numel())
    assert abs(big.double().std().item() / std - 1) < 0.01
    for t in ts[:1] + ts[2:]:  # each tensor on its own is a sample of the same law
        assert abs(t.double().std().item() / std - 1) < 0.05
    if dist.kind == "trunc_normal":
        assert big.min() >= -2 and big.max() <= 2
        assert ks_trunc(big, 0.0, 1.0, -2.0, 2.0) < 1.63 / math.sqrt(big.numel())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,args", [
    ("normal", [(0.0, 0.02), (0.5, 1.0), (-2.0, 0.1), (0.0, 0.0)]),
    ("uniform", [(-1.0, 1.0), (0.0, 0.5), (3.0, 3.25), (-0.01, 0.01)]),
    ("trunc_normal", [(0.0, 1.0, -2.0, 2.0), (0.0, 0.02, -0.04, 0.04), (1.0, 0.5, 0.5, 3.0),
                      (0.0, 1.0, 1.5, 4.0)]),
])
def test_one_kind_of_many_distributions_is_one_generation_call(batch_cpu, kind, args, dtype):
    torch.manual_seed(0)
    dists = [Elementwise(kind, a) for a in args]
    ts = _tensors([(200, 250), (50_000,), (100, 500), (40, 40, 30)], dtype)
    with CountOps() as ops:
        batched.draw_items(list(zip(ts, dists)), dtype)
    assert ops.generations() == 1 and ops.calls["_foreach_copy_"] == 1
    assert ops.calls["erfinv_"] == (1 if kind == "trunc_normal" else 0)
    tol = 0.02 if dtype == torch.float32 else 0.03
    for t, d in zip(ts, dists):  # each tensor is a sample of its own law
        x = t.detach().double().flatten()
        if kind == "normal":
            mean, std = d.args
        elif kind == "uniform":
            mean, std = (d.args[0] + d.args[1]) / 2, (d.args[1] - d.args[0]) / math.sqrt(12)
            assert t.min() >= d.args[0] and t.max() <= d.args[1]  # (bounds in t's dtype)
        else:
            mean, std = trunc_moments(*d.args)
            assert t.min() >= d.args[2] and t.max() <= d.args[3]
            if dtype == torch.float32:
                assert ks_trunc(x, *d.args) < 1.63 / math.sqrt(x.numel())
        if std == 0:
            assert torch.all(x == mean)
            continue
        assert abs(x.mean().item() - mean) < 5 * std / math.sqrt(x.numel()) + abs(mean) * 4e-3
        assert abs(x.std().item() / std - 1) < tol


def test_two_distributions_of_a_kind_are_drawn_apart(batch_cpu):
    ts = _tensors([(100, 100), (50, 50), (100, 100), (30,)])
    dists = [Elementwise("normal", (0.0, 0.02)), Elementwise("normal", (0.0, 0.5))] * 2
    with CountOps() as ops:
        batched.draw_items(list(zip(ts, dists)), torch.float32)
    assert ops.generations() == 2 and ops.calls["_foreach_mul_"] == 0
    assert ops.calls["_foreach_copy_"] == 2
    assert abs(ts[0].std().item() / 0.02 - 1) < 0.05 and abs(ts[1].std().item() / 0.5 - 1) < 0.05


def test_zero_and_negative_zero_constants_are_not_merged(batch_cpu):
    zeros, negs = _tensors([(4,), (5,)]), _tensors([(3,), (6,)])
    pending = batched.Batches()
    for t in zeros:
        pending.add(t, Elementwise("constant", (0.0,)))
    for t in negs:
        pending.add(t, Elementwise("constant", (-0.0,)))
    pending.flush()
    assert not any(torch.signbit(t).any() for t in zeros)
    assert all(torch.signbit(t).all() for t in negs)


def test_a_cnn_with_a_fan_per_shape_takes_one_generation_call(batch_cpu):
    convs = nn.Sequential(*[nn.Conv2d(c, 2 * c, k) for c, k in
                            [(3, 7), (6, 3), (12, 1), (24, 3), (48, 1), (96, 3)]])
    rules = [dict(type="Kaiming", layer="Conv2d", mode="fan_out", nonlinearity="relu",
                  bias=0.0)]
    with wi.deferred():
        m = copy.deepcopy(convs)
    with CountOps() as ops:
        wi.initialize(m, rules, device="cpu")
    assert ops.generations() == 1  # six fans, six stds: one draw, scaled per tensor
    for conv in m:
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        expected = math.sqrt(2.0 / fan_out)
        assert abs(conv.weight.std().item() / expected - 1) < 0.15
        assert torch.all(conv.bias == 0)


def test_constants_are_exact_and_written_once(batch_cpu):
    zeros, ones, neg = _tensors([(5, 4), (3,)]), _tensors([(2, 2), (9,)]), _tensors([(4,)] * 2)
    with CountOps() as ops:
        batched.draw_group(Elementwise("constant", (0.0,)), zeros, torch.float32)
        batched.draw_group(Elementwise("constant", (1.0,)), ones, torch.float32)
        batched.draw_group(Elementwise("constant", (-0.0,)), neg, torch.float32)
    assert ops.generations() == 0 and ops.calls["_foreach_zero_"] == 1
    assert all(torch.all(t == 0) for t in zeros) and all(torch.all(t == 1) for t in ones)
    assert all(torch.all(torch.signbit(t)) for t in neg)
    zeros, ones = _tensors([(5, 4), (3,)]), _tensors([(2, 2), (9,)])
    batched.draw_group(Elementwise("constant", (0.0,)), zeros, torch.float32)
    batched.draw_group(Elementwise("constant", (1.0,)), ones, torch.float32)
    assert [t._version for t in zeros + ones] == [1] * 4


def test_large_groups_split_and_large_tensors_draw_alone(batch_cpu, monkeypatch):
    monkeypatch.setattr(batched, "MAX_BATCH_BYTES", 4 * 1000)
    monkeypatch.setattr(batched, "DIRECT_MIN_BYTES", 4 * 5000)
    ts = _tensors([(600,), (600,), (100,), (6000,), (10,)])
    with CountOps() as ops:
        batched.draw_group(Elementwise("normal", (0.0, 1.0)), ts, torch.float32)
    # [600] alone (a one-tensor buffer is drawn in place), 6000 alone, [600, 100, 10]
    assert ops.generations() == 3
    assert all(torch.isfinite(t).all() for t in ts)


class Many(nn.Module):
    def __init__(self, n: int = 12, dim: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n))


RULES = [dict(type="Normal", layer="Linear", std=0.02, bias=0.0),
         dict(type="Constant", layer="LayerNorm", val=1.0, bias=0.0)]


def test_init_weights_batches_one_call_per_distribution(batch_cpu):
    with wi.deferred():
        m = Many()
    with CountOps() as ops:
        wi.initialize(m, RULES, device="cpu")
    # one normal_ for the 12 Linear weights; the zeros and ones take no generation call
    assert ops.generations() == 1
    w = torch.cat([layer.weight.detach().flatten() for layer in m.layers])
    assert abs(w.std().item() / 0.02 - 1) < 0.05
    assert all(torch.all(layer.bias == 0) for layer in m.layers)
    assert all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in m.norms)
    params = list(m.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)  # own storage
    with wi.deferred():
        m = Many()
    wi.initialize(m, RULES, device="cpu")
    assert all(p._version == 1 for p in m.parameters())


def test_eager_model_batched_and_not_seeded_runs(batch_cpu, monkeypatch):
    m = Many(n=4)
    wi.initialize(m, RULES)
    assert all(abs(layer.weight.std().item() / 0.02 - 1) < 0.3 for layer in m.layers)
    # seeded runs never batch: their values are the blockwise definition
    a, b = Many(n=4), Many(n=4)
    wi.initialize(a, RULES, seed=7)
    monkeypatch.undo()
    wi.initialize(b, RULES, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_batch_target_default_leaves_the_cpu_alone():
    assert not batched.batch_target(torch.empty(3))
    assert not batched.batch_target(torch.empty(3, device="meta"))
    torch.manual_seed(0)
    a = Many(n=3)
    wi.initialize(a, RULES)
    torch.manual_seed(0)
    b = Many(n=3)
    with CountOps() as ops:
        wi.initialize(b, RULES)
    assert ops.generations() == 3  # one per Linear weight, as before
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


# -- constant defaults: one fill for all, no copy of a recorded value ---------------------------

@pytest.mark.parametrize("value,expected", [
    (torch.ones(5), 1.0),
    (torch.full((3, 4), -0.0), -0.0),
    (torch.full((2, 3), 0.25, dtype=torch.bfloat16), 0.25),
    (torch.full((6,), 1e-3, dtype=torch.float64), 1e-3),
    (torch.ones(4, 3).t(), 1.0),  # not contiguous
    (torch.tensor([0.0, -0.0]), None),  # equal, but not bit for bit
    (torch.tensor([1.0, 1.0, 2.0]), None),
    (torch.full((3,), float("nan")), None),
    (torch.full((3,), float("inf")), None),
    (torch.ones(3, dtype=torch.long), None),
    (torch.ones(3, dtype=torch.complex64), None),
    (torch.empty(0), None),
    (torch.ones(3, device="meta"), None),
    (torch.full((100, 100), 0.5), 0.5),  # large: ends checked first, then all
    (torch.arange(10_000.0), None),
    (torch.cat([torch.ones(5000), torch.zeros(1), torch.ones(5000)]), None),
])
def test_uniform_value(value, expected):
    from weightinit.planning.recorded import uniform_value

    dist = uniform_value(value)
    if expected is None:
        assert dist is None
    else:
        assert dist == Elementwise("constant", (expected,))
        assert math.copysign(1.0, dist.args[0]) == math.copysign(1.0, expected)


class Norms(nn.Module):
    """Defaults of every kind: ``torch.ones``/``torch.zeros`` values, ``init.ones_``/``zeros_``
    (LayerNorm), kaiming draws (Linear), and a value that is not one constant."""

    def __init__(self, n: int = 6, dim: int = 16, host_values: bool = True) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, dim))
        self.linears = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n))
        self.scales = nn.ParameterList(nn.Parameter(torch.ones(dim)) for _ in range(n))
        if host_values:  # values only a copy from host memory can give
            self.signed = nn.Parameter(torch.tensor([0.0, -0.0, 0.0]))
            self.register_buffer("ramp", torch.arange(4.0))


def _no_rules_materialized(seed: int | None = None):
    with wi.deferred():
        m = Norms()
    with CountOps() as ops:
        wi.initialize(m, [], device="cpu", seed=seed)
    return m, ops


def test_constant_defaults_are_filled_together_and_equal_eager(batch_cpu):
    torch.manual_seed(5)
    eager = Norms()
    torch.manual_seed(5)
    m, ops = _no_rules_materialized()
    for (name, a), b in zip(eager.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a.signbit(), b.signbit()), name
    # six Linear weights and biases are drawn one by one, in construction order, as eagerly;
    # the 1 + 6 + 6 zero tensors and 6 + 6 one tensors take two multi-tensor writes and one fill;
    # only the value that is not one constant is copied (the arange buffer stays as built)
    assert ops.calls["uniform_"] == 12
    assert ops.calls["_foreach_zero_"] == 1 and ops.calls["_foreach_copy_"] == 1
    assert ops.calls["fill_"] == 1 and ops.calls["copy_"] == 1
    with wi.deferred():
        m = Norms()
    wi.initialize(m, [], device="cpu")  # (a dispatch mode hides the version bumps)
    assert {n: p._version for n, p in m.named_parameters()} == {
        n: 1 for n, _ in m.named_parameters()}
    ptrs = {t.untyped_storage().data_ptr() for t in m.state_dict().values()}
    assert len(ptrs) == len(m.state_dict())  # each tensor its own storage


def test_seeded_constant_defaults_are_batched_with_the_same_values(batch_cpu, monkeypatch):
    m, ops = _no_rules_materialized(seed=3)
    assert ops.calls["_foreach_zero_"] == 1 and ops.calls["copy_"] == 1
    monkeypatch.undo()  # neither batched nor inverse-CDF: the per-tensor definition
    ref, ref_ops = _no_rules_materialized(seed=3)
    assert ref_ops.calls["_foreach_zero_"] == 0 and ref_ops.calls["copy_"] == 1
    for (name, a), b in zip(ref.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a.signbit(), b.signbit()), name


def test_seeded_rule_constants_are_batched_and_random_fills_are_not(batch_cpu):
    with wi.deferred():
        m = Many(n=5)
    with CountOps() as ops:
        wi.initialize(m, RULES, device="cpu", seed=11)
    assert ops.calls["_foreach_zero_"] == 1  # 5 Linear biases and 5 LayerNorm biases
    assert ops.calls["normal_"] >= 5  # each seeded weight from its own generator
    ref = Many(n=5)
    wi.initialize(ref, RULES, seed=11)
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), m.parameters()))


def test_a_tensor_queued_in_a_batch_and_written_again_ends_with_the_last_write(batch_cpu):
    from weightinit.planning import Role, RuleFill
    from weightinit.rules import build_initializer

    layer = nn.Linear(8, 8)
    const = RuleFill(build_initializer(dict(type="Constant", val=3.0), "a"), Role.WEIGHT, layer, "a")
    draw = RuleFill(build_initializer(dict(type="Normal", std=1.0), "b"), Role.WEIGHT, layer, "b")
    t = torch.zeros(64, 8)
    strategies.Seeded(5).write_many([(t, const), (t, draw)], lambda _: "w")
    assert not torch.any(t == 3.0) and abs(t.std().item() - 1) < 0.2  # the draw came last
    strategies.Seeded(5).write_many([(t, draw), (t, const)], lambda _: "w")
    assert torch.all(t == 3.0)


# -- host tensors moved to the device: one copy for all --------------------------------------

def _sources():
    return [torch.zeros(7), torch.ones(3, 4), torch.full((5,), -0.0), torch.tensor(0),
            torch.arange(6.0).view(2, 3), torch.linspace(0, 1, 9, dtype=torch.float64),
            torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
            torch.tensor([True, False]), torch.randn(300)]


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_move_all_gives_the_values_of_to(dtype):
    srcs = _sources()
    want = [s.to(dtype) if dtype is not None and s.is_floating_point() else s for s in srcs]
    dsts = [torch.empty_like(w) for w in want]
    with CountOps() as ops:
        batched.move_all(list(zip(srcs, dsts)))
    for s, w, d in zip(srcs, want, dsts):
        assert d.dtype == w.dtype and d.stride() == w.stride(), s
        assert torch.equal(d, w) and torch.equal(d.signbit(), w.signbit()) if \
            d.is_floating_point() else torch.equal(d, w)
    # the three constant tensors are filled (one zero_ for 0.0, fills for 1 and -0.0); the
    # three float32 sources are packed into one buffer (one cat, no copy each); a (source,
    # destination) dtype pair with one tensor (float64, int64, bool) is a copy of its own
    assert ops.calls["_foreach_zero_"] == 1 and ops.calls["fill_"] == 2
    assert ops.calls["cat"] == 1 and ops.calls["copy_"] == 3 and ops.calls["_to_copy"] == 0


def test_only_dense_host_tensors_bound_for_a_device_are_moved_together():
    cuda_dev, cpu, meta = torch.device("cuda"), torch.device("cpu"), torch.device("meta")
    dense = torch.zeros(3)
    assert batched.move_target(dense, cuda_dev) and batched.move_target(nn.Parameter(dense),
                                                                        cuda_dev)
    assert not batched.move_target(dense, cpu) and not batched.move_target(dense, meta)
    assert not batched.move_target(torch.zeros(3).to_sparse(), cuda_dev)
    assert not batched.batch_target(torch.zeros(3).to_sparse())


def test_move_all_copies_large_sources_on_their_own(monkeypatch):
    monkeypatch.setattr(batched, "DIRECT_MIN_BYTES", 400)
    srcs = [torch.randn(200), torch.randn(10), torch.randn(20), torch.zeros(500)]
    dsts = [torch.empty_like(t) for t in srcs]
    with CountOps() as ops:
        batched.move_all(list(zip(srcs, dsts)))
    assert all(torch.equal(a, b) for a, b in zip(srcs, dsts))
    assert ops.calls["copy_"] == 1 and ops.calls["cat"] == 1  # the 200, then 10 + 20 together
    assert ops.calls["_foreach_zero_"] == 1  # 500 zeros: a fill, however large


class WithStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.register_buffer("freqs", torch.linspace(0.1, 1.0, 8))


def test_materialization_moves_host_tensors_together(monkeypatch):
    rules = [dict(type="Constant", layer="BatchNorm2d", val=2.0, bias=0.0)]
    base = WithStats()
    ref, m = copy.deepcopy(base), copy.deepcopy(base)
    wi.initialize(ref, rules, seed=2, dtype=torch.float64)
    monkeypatch.setattr(batched, "move_target", lambda t, device: t.device.type == "cpu")
    with CountOps() as ops:
        wi.initialize(m, rules, seed=2, dtype=torch.float64)
    for (name, a), b in zip(ref.state_dict().items(), m.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    # the BatchNorm statistics are constants: filled; its weight and bias are the rule's
    # (allocated, not copied); freqs and the conv's weight and bias are packed into one
    # float32 buffer, converted by one multi-tensor copy into their float64 tensors
    assert ops.calls["cat"] == 1 and ops.calls["_foreach_copy_"] == 1
    assert ops.calls["_to_copy"] == 0 and ops.calls["copy_"] == 0
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())


def test_a_failed_packed_move_leaves_the_model_as_it_was(monkeypatch):
    monkeypatch.setattr(batched, "move_target", lambda t, device: t.device.type == "cpu")

    def fail(chunk):
        chunk[0][1].fill_(7.0)  # half-way: one destination written, then out of memory
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(batched, "_move_chunk", fail)
    m = WithStats()
    before = {k: (v, v.clone()) for k, v in m.state_dict(keep_vars=True).items()}
    with pytest.raises(wi.MaterializeError, match="out of memory"):
        wi.initialize(m, [dict(type="Constant", layer="BatchNorm2d", val=2.0)],
                      dtype=torch.float64)
    after = m.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, (obj, value) in before.items():
        assert after[k] is obj and torch.equal(after[k], value), k  # same tensors, same values


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.register_buffer("table", torch.linspace(0, 1, 16))


class ReadsFirst(wi.BaseModule):
    """User code that reads its weight before the rules write it."""

    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Normal", layer="Linear", std=0.5))
        self.fc = nn.Linear(16, 16)
        self.seen = None

    def init_weights(self) -> None:
        self.seen = self.fc.weight.detach().clone()
        super().init_weights()


def test_tensors_a_rule_overwrites_whole_are_not_copied_to_the_new_dtype():
    torch.manual_seed(0)
    m = Block()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with CountOps() as ops:
        wi.initialize(m, [dict(type="Normal", layer="Linear", std=0.5, bias=0.0)],
                      dtype=torch.float64)
    # fc.weight and fc.bias are only filled: allocated in float64, not converted first
    assert ops.calls["_to_copy"] == 3  # norm.weight, norm.bias, table
    assert all(t.dtype == torch.float64 for t in m.state_dict().values())
    for k in ("norm.weight", "norm.bias", "table"):
        assert torch.equal(m.state_dict()[k], before[k].double()), k
    assert torch.all(m.fc.bias == 0) and abs(m.fc.weight.std().item() / 0.5 - 1) < 0.2


def test_tensors_user_code_can_see_are_copied_before_it_runs():
    torch.manual_seed(0)
    m = ReadsFirst()
    original = m.fc.weight.detach().clone()
    m.init_weights(dtype=torch.float64)
    assert torch.equal(m.seen, original.double())  # the constructed values, converted
    assert m.fc.weight.dtype == torch.float64 and not torch.equal(m.fc.weight, m.seen)


def test_bench_gpu_without_cuda_says_so():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py")],
                          capture_output=True, text=True, timeout=120,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "needs CUDA" in done.stdout


def test_bench_gpu_host_mode_runs_anywhere_and_counts_kernels():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--host",
                           "--markdown", "--repeats", "1", "--models", "llama_1b", "vit_b16"],
                          capture_output=True, text=True, timeout=300,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines()
            if line.startswith("| Llama") or line.startswith("| ViT")]
    assert len(rows) == 2
    for row in rows:
        tensors, kernels, per_tensor = int(row[2]), int(row[5]), int(row[7].rstrip(" |"))
        assert per_tensor == tensors  # one write each, nothing written twice
        assert kernels <= tensors // 4  # a few kernels per distribution (and buffer moves)


# -- on a GPU -------------------------------------------------------------------------------

@cuda
def test_deferred_materialization_on_cuda_has_the_right_distributions():
    torch.manual_seed(0)
    with wi.deferred():
        m = Many(n=16, dim=256)
    wi.initialize(m, [dict(type="TruncNormal", layer="Linear", std=0.5, a=-1.0, b=1.0,
                           bias=0.0), RULES[1]], device="cuda")
    w = torch.cat([layer.weight.detach().flatten() for layer in m.layers]).cpu()
    assert w.min() >= -1 and w.max() <= 1
    assert ks_trunc(w, 0.0, 0.5, -1.0, 1.0) < 1.63 / math.sqrt(w.numel())
    assert all(torch.all(n.weight == 1) for n in m.norms)
    assert all(p._version == 1 for p in m.parameters())


@cuda
def test_trunc_normal_on_cuda_reads_nothing_back():
    x = torch.empty(1 << 20, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        wi.trunc_normal_(x, 0.0, 0.02, -2.0, 2.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(x.abs().max()) < 0.2


@cuda
def test_materialization_on_cuda_reads_nothing_back_nor_copies_constants():
    with wi.deferred():
        m = Norms(n=8, dim=256, host_values=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        wi.initialize(m, RULES[:1], device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.all(p == 1) for p in m.scales)
    assert all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in m.norms)


@cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_host_tensors_moved_to_cuda_keep_their_values(dtype):
    torch.manual_seed(0)
    m = WithStats()
    m.bn.running_mean.normal_()
    want = {k: v.to("cuda", dtype if dtype is not None and v.is_floating_point() else v.dtype)
            for k, v in m.state_dict().items()}
    wi.initialize(m, [], device="cuda", dtype=dtype)
    got = m.state_dict()
    assert all(got[k].dtype == v.dtype and torch.equal(got[k], v) for k, v in want.items())


@cuda
def test_cuda_kernel_count_is_a_few_per_rule():
    from torch.profiler import ProfilerActivity, profile

    with wi.deferred():
        m = Many(n=48, dim=128)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        wi.initialize(m, RULES, device="cuda")
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    distinct = 3  # normal 0.02, constant 1, constant 0
    assert len(kernels) <= distinct * 3 + 10, Counter(e.name for e in kernels)
