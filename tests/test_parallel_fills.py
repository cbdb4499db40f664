"""Elementwise fills of large CPU tensors are drawn in pieces on several threads (issue 16).

Seeded values are those of the tiled definition whatever the thread
count; unseeded large fills follow ``torch.manual_seed`` (one draw of the
global generator seeds every piece), are statistically right, and advance
the global generator. Small unseeded fills are drawn as before.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.execution import choose, parallel
from weightinit.execution.seeding import (
    UNSEEDED_MIN,
    derive_seed,
    fill_elementwise,
    fill_unseeded,
)
from weightinit.execution.tiles import TILE, tile_seed, tile_shape
from weightinit.maths import Elementwise
from weightinit.planning import Write
from weightinit.rules.registry import WEIGHT_INITIALIZERS, build_from_cfg

# a 2100 x 1024 weight: bands of 256 whole rows, 9 of them, the last one short
BIG = (1024, 2100)

RULES = {
    "normal": dict(type="Normal", layer="Linear", mean=0.1, std=0.5, bias=0.25),
    "uniform": dict(type="Uniform", layer="Linear", a=-0.3, b=0.7, bias=0.25),
    # bounds 2 std away: about 4.6 % of first draws are redrawn
    "trunc_normal": dict(type="TruncNormal", layer="Linear", std=1.0, a=-2.0, b=2.0),
    # under 30 % of the mass inside [a, b]: the inverse-CDF method
    "trunc_normal_narrow": dict(type="TruncNormal", layer="Linear", std=1.0, a=-0.3, b=0.2),
    "trunc_normal_vs": dict(type="VarianceScaling", layer="Linear", scale=2.0),
    "constant": dict(type="Constant", layer="Linear", val=0.75, bias=-1.0),
}


@pytest.fixture
def threads(monkeypatch):
    """Set torch's thread count for a test (restored after); WEIGHTINIT_NUM_THREADS unset."""
    before = torch.get_num_threads()
    monkeypatch.delenv(parallel.ENV_THREADS, raising=False)

    def set_threads(n: int) -> None:
        torch.set_num_threads(n)

    yield set_threads
    torch.set_num_threads(before)


def big_model() -> nn.Module:
    return nn.Sequential(nn.Linear(*BIG), nn.LayerNorm(BIG[1]))


def values(m: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def reference(dist: Elementwise, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The tiled definition for a 1- or 2-D tensor, drawn tile by tile on this thread: tile
    (i, j) of the grid is drawn whole into its own buffer from a generator seeded by
    (seed, its row-major index)."""
    shape2 = shape if len(shape) == 2 else (1, shape[0])
    rows, cols = tile_shape(shape) if len(shape) == 2 else (1, tile_shape(shape)[0])
    out = torch.empty(shape2)
    index = 0
    for r in range(0, shape2[0], rows):
        for c in range(0, shape2[1], cols):
            tile = torch.empty(min(rows, shape2[0] - r), min(cols, shape2[1] - c))
            dist.fill_(tile, torch.Generator().manual_seed(tile_seed(seed, index)))
            out[r:r + rows, c:c + cols] = tile
            index += 1
    return out.view(shape)


# ------------------------------------------------------------------------ seeded


@pytest.mark.parametrize("rule", list(RULES))
def test_seeded_values_do_not_depend_on_the_thread_count(rule, threads, monkeypatch):
    runs = []
    for n in (1, 2):
        threads(n)
        m = big_model()
        wi.initialize(m, RULES[rule], seed=1234)
        runs.append(values(m))
    monkeypatch.setenv(parallel.ENV_THREADS, "3")  # more threads than cores, odd split
    m = big_model()
    wi.initialize(m, RULES[rule], seed=1234)
    runs.append(values(m))
    assert_same(runs[0], runs[1])
    assert_same(runs[0], runs[2])


@pytest.mark.parametrize("rule", ["normal", "uniform", "trunc_normal", "trunc_normal_narrow",
                                  "trunc_normal_vs"])
def test_seeded_values_are_the_tiled_definition(rule, threads):
    threads(2)
    m = big_model()
    wi.initialize(m, RULES[rule], seed=5)
    init = build_from_cfg(dict(RULES[rule]), WEIGHT_INITIALIZERS)
    shape = tuple(m[0].weight.shape)
    dist = init.elementwise("weight", shape, m[0])
    tensor_seed = derive_seed(5, "0.weight", f"{init.seed_key}|weight")
    assert tile_shape(shape) == (256, 1024)
    expected = reference(dist, shape, tensor_seed)
    assert torch.equal(m[0].weight.detach(), expected)
    if dist.kind == "trunc_normal":
        assert m[0].weight.min() >= dist.args[2] and m[0].weight.max() <= dist.args[3]


def test_seeded_shard_ranges_match_the_whole_tensor(threads):
    threads(2)
    dist = Elementwise("trunc_normal", (0.0, 1.0, -2.0, 2.0))
    total = 3 * TILE + 17
    whole = torch.empty(total)
    fill_elementwise(dist, whole, 77)
    assert torch.equal(whole, reference(dist, (total,), 77))
    for start, length in ((5, TILE), (TILE - 3, TILE + 9), (2 * TILE, TILE + 17)):
        part = torch.empty(length)
        fill_elementwise(dist, part, 77, shape=(total,), offset=(start,))
        assert torch.equal(part, whole[start:start + length]), (start, length)


def test_seeded_wide_matrix_is_cut_in_row_bands(threads):
    threads(2)
    dist = Elementwise("normal", (0.0, 1.0))
    shape = (1100, 1300)  # bands of 201 rows: 6 of them, the last one short
    assert tile_shape(shape) == (201, 1300)
    whole = torch.empty(shape)
    fill_elementwise(dist, whole, 4)
    assert torch.equal(whole, reference(dist, shape, 4))


def test_seeded_non_contiguous_tensor(threads):
    dist = Elementwise("normal", (0.0, 1.0))
    base = torch.full((2 * TILE + 5, 2), float("nan"))
    threads(2)
    fill_elementwise(dist, base[:, 1], 9)
    assert torch.equal(base[:, 1].contiguous(), reference(dist, (2 * TILE + 5,), 9))
    assert base[:, 0].isnan().all()  # the other column is left alone


def test_one_write_counts_once(threads):
    threads(2)
    w = nn.Parameter(torch.empty(3 * TILE))
    version = w._version
    fill_elementwise(Elementwise("normal", (0.0, 1.0)), w, 3)
    assert w._version == version + 1 and w.requires_grad


# ---------------------------------------------------------------------- unseeded


def unseeded(rule: str, torch_seed: int) -> dict[str, torch.Tensor]:
    m = big_model()
    torch.manual_seed(torch_seed)
    wi.initialize(m, RULES[rule])
    return values(m)


@pytest.mark.parametrize("rule", list(RULES))
def test_unseeded_follows_torch_manual_seed(rule, threads):
    threads(2)
    a, b = unseeded(rule, 3), unseeded(rule, 3)
    assert_same(a, b)
    threads(1)  # the pieces do not depend on the thread count either
    assert_same(a, unseeded(rule, 3))
    if rule != "constant":
        c = unseeded(rule, 4)
        assert not torch.equal(a["0.weight"], c["0.weight"])


def test_unseeded_small_tensors_draw_as_before(threads):
    threads(2)
    m = nn.Linear(64, 64)  # under UNSEEDED_MIN: one normal_ from the global generator
    assert m.weight.numel() < UNSEEDED_MIN
    torch.manual_seed(0)
    wi.initialize(m, dict(type="Normal", layer="Linear", std=0.3, bias=0))
    torch.manual_seed(0)
    expected = torch.empty(64, 64).normal_(0.0, 0.3)
    assert torch.equal(m.weight.detach(), expected)


def test_unseeded_fills_advance_the_global_generator(threads):
    threads(2)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    t = torch.empty(2 * UNSEEDED_MIN)
    dist = Elementwise("normal", (0.0, 1.0))
    fill_unseeded(dist, t)
    first = t.clone()
    assert not torch.equal(torch.get_rng_state(), state)
    fill_unseeded(dist, t)
    assert not torch.equal(t, first)
    # tiles are drawn from distinct generators
    assert not torch.equal(first[:1000], first[TILE:TILE + 1000])


@pytest.mark.parametrize("threads_n", [1, 2])
def test_unseeded_statistics(threads_n, threads):
    threads(threads_n)
    torch.manual_seed(2024)
    n = 16 * TILE
    t = torch.empty(n)

    fill_unseeded(Elementwise("normal", (0.1, 0.5)), t)
    se = 0.5 / math.sqrt(n)
    assert abs(t.mean().item() - 0.1) < 6 * se
    assert abs(t.std().item() - 0.5) < 6 * se / math.sqrt(2) * 1.5
    # neighbouring tiles are uncorrelated
    tiles = t.view(-1, TILE)
    corr = torch.corrcoef(tiles[:2])[0, 1].item()
    assert abs(corr) < 6 / math.sqrt(TILE)

    fill_unseeded(Elementwise("uniform", (-0.3, 0.7)), t)
    assert t.min().item() >= -0.3 and t.max().item() <= 0.7
    assert abs(t.mean().item() - 0.2) < 6 * (1 / math.sqrt(12)) / math.sqrt(n)

    fill_unseeded(Elementwise("trunc_normal", (0.0, 1.0, -2.0, 2.0)), t)
    assert t.min().item() >= -2.0 and t.max().item() <= 2.0
    std = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]
    assert abs(t.mean().item()) < 6 * std / math.sqrt(n)
    assert abs(t.std().item() - std) < 6 * std / math.sqrt(2 * n) * 1.5


def test_model_defaults_still_replay_eagerly(threads):
    """Plain runs replay constructor inits as constructed: unchanged by the pieces."""
    threads(2)
    torch.manual_seed(8)
    eager = nn.Linear(*BIG)
    with wi.deferred():
        lazy = nn.Linear(*BIG)
    torch.manual_seed(8)
    wi.initialize(lazy, [])
    assert torch.equal(eager.weight, lazy.weight) and torch.equal(eager.bias, lazy.bias)


# ------------------------------------------------------------------------ the pool


def test_thread_count_knob(monkeypatch, threads):
    threads(2)
    assert parallel.num_threads() == 2
    monkeypatch.setenv(parallel.ENV_THREADS, "5")
    assert parallel.num_threads() == 5
    monkeypatch.setenv(parallel.ENV_THREADS, "0")  # not a positive int: torch's count
    assert parallel.num_threads() == 2


def test_jobs_are_taken_in_contiguous_groups_of_about_a_tile():
    tile = parallel.CHUNK
    assert parallel.chunks([tile] * 4, 2) == [[0], [1], [2], [3]]
    assert parallel.chunks([tile // 2] * 64, 1) == [[i, i + 1] for i in range(0, 64, 2)]
    # little to do: groups shrink so each thread still gets several, but not below MIN_CHUNK
    small = parallel.chunks([1000] * 1000, 2)
    assert [i for g in small for i in g] == list(range(1000))
    assert len(small) >= 16 and all(len(g) * 1000 >= parallel.MIN_CHUNK for g in small[:-1])
    assert parallel.chunks([5], 4) == [[0]] and parallel.chunks([], 2) == []


def test_a_slow_thread_takes_fewer_jobs():
    """Threads take the next group when they are free: one slowed down does less."""
    import threading
    import time

    done: dict[str, int] = {}
    lock = threading.Lock()

    def job(i):
        def run():
            me = threading.current_thread().name
            if me.startswith("weightinit-fill"):
                time.sleep(0.02)  # the pool thread is slow
            with lock:
                done[me] = done.get(me, 0) + 1
        return run

    parallel.run_jobs([job(i) for i in range(40)], [parallel.CHUNK] * 40, threads=2)
    assert sum(done.values()) == 40
    caller = done[threading.current_thread().name]
    assert caller > 40 - caller, done


def test_job_errors_propagate_after_all_jobs_ran():
    ran = []

    def ok(i):
        return lambda: ran.append(i)

    def bad():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        parallel.run_jobs([ok(0), bad, ok(2), ok(3)], [1, 1, 1, 1], threads=2)
    assert 2 in ran and 3 in ran


# ------------------------------------------------------------- batched writes


class Mixed(nn.Module):
    """Small and large tensors, biases, a norm and a non-elementwise rule (orthogonal)."""

    def __init__(self):
        super().__init__()
        self.small = nn.Linear(64, 48)
        self.big = nn.Linear(*BIG)
        self.mid = nn.Linear(512, 600)  # one seeded block, several unseeded pieces
        self.norm = nn.LayerNorm(600)
        self.orth = nn.Linear(32, 32)


MIXED_CFG = [dict(type="TruncNormal", layer="Linear", std=0.02, bias=0.5),
             dict(type="Constant", layer="LayerNorm", val=1, bias=0),
             dict(type="Orthogonal", override=dict(name="orth"))]


def planned_writes(m: nn.Module) -> tuple[list, object]:
    p = wi.plan(m, MIXED_CFG)
    writes = [(w.tensor, w.op) for step in p.steps if isinstance(step, tuple)
              for w in step if isinstance(w, Write)]
    names = {id(t): n for n, t in m.named_parameters()}
    return writes, lambda t: names[id(t)]


@pytest.mark.parametrize("seed", [None, 21])
def test_write_many_equals_writing_one_by_one(seed, threads):
    threads(2)
    results = []
    for batched in (False, True):
        m = Mixed()
        writes, name_of = planned_writes(m)
        strategy = choose(m, seed)
        torch.manual_seed(5)
        with torch.no_grad():
            if batched:
                strategy.write_many(writes, name_of)
            else:
                for tensor, op in writes:
                    strategy.write(tensor, op, name_of)
        results.append((values(m), torch.rand(3)))  # the global generator's state after
    assert_same(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    params = results[1][0]
    assert torch.all(params["small.bias"] == 0.5) and torch.all(params["norm.weight"] == 1)
    q = params["orth.weight"]
    assert torch.allclose(q @ q.T, torch.eye(32), atol=1e-5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_pool(threads):
    threads(2)
    fill_unseeded(Elementwise("normal", (0.0, 1.0)), torch.empty(2 * UNSEEDED_MIN))  # pool up
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's pool threads do not exist here
        code = 1
        try:
            # torch's own OpenMP cannot be used again in a forked child once the parent
            # used it (libgomp): one torch thread, as in DataLoader workers; 2 of ours
            torch.set_num_threads(1)
            os.environ[parallel.ENV_THREADS] = "2"
            t = torch.empty(2 * UNSEEDED_MIN)
            fill_unseeded(Elementwise("uniform", (1.0, 2.0)), t)
            code = 0 if t.min() >= 1.0 else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    result = os.read(read, 1)
    os.waitpid(pid, 0)
    assert result == bytes([0])
