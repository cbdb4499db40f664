"""The one write primitive: any rectangular region of a seeded fill, drawn alone, equals the
same region of the whole fill; only the tiles it overlaps are drawn; scratch is one tile."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from weightinit.execution import parallel, tiles
from weightinit.execution.seeding import fill_elementwise
from weightinit.execution.tiles import TILE, RegionFill, tile_shape
from weightinit.maths import Elementwise

NORMAL = Elementwise("normal", (0.0, 1.0))
DISTS = [NORMAL, Elementwise("uniform", (-2.0, 0.5)),
         Elementwise("trunc_normal", (0.0, 1.0, -0.7, 1.2))]


@pytest.mark.parametrize("shape,tile", [
    ((), ()),
    ((5,), (5,)),
    ((1 << 20,), (TILE,)),
    ((4096, 4096), (64, 4096)),            # a wide matrix: bands of whole rows
    ((300, 64), (300, 64)),                # short rows: one tile
    ((10000, 64), (4096, 64)),
    ((64, 64, 3, 3), (64, 64, 3, 3)),      # a small conv: one tile
    ((512, 512, 3, 3), (56, 512, 3, 3)),
    ((8, 1024, 1024), (1, 256, 1024)),     # stacked experts
    ((3, 0), (3, 1)),
    ((600, 600, 600), (1, 436, 600)),
    ((2, 3, 100000), (1, 2, 100000)),
    ((1, 10 ** 7), (1, TILE)),             # a row longer than a tile: pieces of it
])
def test_tile_shape_is_a_fixed_function_of_the_shape(shape, tile):
    assert tile_shape(shape) == tile
    assert math.prod(tile) <= TILE
    # a contiguous range: whole trailing dimensions after the first partial one, 1s before
    partial = [d for d, (side, n) in enumerate(zip(tile, shape)) if side < n]
    if partial:
        assert all(side == 1 for side in tile[:partial[-1]]), tile


def _random_boxes(shape, count, rng):
    for _ in range(count):
        lo = [rng.randrange(n) for n in shape]
        hi = [rng.randrange(a + 1, n + 1) for a, n in zip(lo, shape)]
        yield tuple(lo), tuple(b - a for a, b in zip(lo, hi))


@pytest.mark.parametrize("shape", [(3 * TILE + 11,), (1300, 1100), (700, 30),
                                   (5, 700, 600), (2, 3, 520, 700)])
@pytest.mark.parametrize("dist", DISTS, ids=lambda d: d.kind)
def test_any_region_drawn_alone_equals_that_region_of_the_whole(shape, dist):
    whole = torch.empty(shape)
    fill_elementwise(dist, whole, 123)
    rng = random.Random(hash(shape) & 0xFFFF)
    for offset, size in _random_boxes(shape, 6, rng):
        part = torch.full(size, float("nan"))
        fill_elementwise(dist, part, 123, shape=shape, offset=offset)
        index = tuple(slice(o, o + n) for o, n in zip(offset, size))
        assert torch.equal(part, whole[index]), (offset, size)


def test_regions_tile_the_tensor_exactly_once():
    shape = (1030, 1500)  # bands of 174 rows: 6 of them, the last 160 rows
    assert tile_shape(shape) == (174, 1500)
    drawn = []
    for offset, size in [((0, 0), (515, 750)), ((0, 750), (515, 750)),
                         ((515, 0), (515, 750)), ((515, 750), (515, 750))]:
        for index, _, _ in tiles.overlapping_tiles(shape, offset, size):
            drawn.append(index)
    # rows 0-514 overlap bands 0-2, rows 515-1029 bands 2-5; a band is drawn by each
    # region that overlaps it
    assert sorted(set(drawn)) == list(range(6))
    assert len(drawn) == 3 + 3 + 4 + 4


def test_drawn_elements_is_the_local_part_plus_one_band_per_boundary():
    shape = (4096, 4096)  # bands of 64 rows
    assert tiles.drawn_elements(shape, (1024, 0), (1024, 4096)) == 1024 * 4096  # aligned
    # rows 1000-1999: bands from row 960 to 2047, 1088 rows drawn
    assert tiles.drawn_elements(shape, (1000, 0), (1000, 4096)) == 1088 * 4096
    # a column range (a row-parallel shard) draws the whole rows it crosses
    assert tiles.drawn_elements(shape, (0, 1024), (4096, 1024)) == 4096 * 4096
    assert tiles.drawn_elements(shape, (0, 0), (0, 5)) == 0
    assert tiles.drawn_elements((), (), ()) == 1


@pytest.mark.parametrize("n", [1, 2, 3])
def test_values_do_not_depend_on_the_thread_count(n, monkeypatch):
    monkeypatch.setenv(parallel.ENV_THREADS, "1")
    reference = torch.empty(900, 1300)
    fill_elementwise(DISTS[2], reference, 8)
    monkeypatch.setenv(parallel.ENV_THREADS, str(n))
    again = torch.empty(900, 1300)
    fill_elementwise(DISTS[2], again, 8)
    assert torch.equal(reference, again)


def test_scratch_is_at_most_one_tile(monkeypatch):
    sizes = []
    empty = torch.empty

    def recording(*size, **kwargs):
        t = empty(*size, **kwargs)
        sizes.append(t.numel() * t.element_size())
        return t

    monkeypatch.setattr(torch, "empty", recording)
    out = empty(2000, 3000)
    fill = RegionFill(NORMAL, out[:, 7:2900], 1, (2000, 3000), (0, 7))
    parallel.draw_all([fill])
    assert sizes and max(sizes) <= TILE * 4  # bytes: one float32 tile per thread
    assert sum(size == TILE * 4 for size in sizes) <= parallel.num_threads()


def test_one_write_of_the_region_is_one_version_bump_and_keeps_grad_flags():
    p = torch.nn.Parameter(torch.empty(1500, 1500))
    before = p._version
    fill_elementwise(NORMAL, p, 3)
    assert p._version == before + 1 and p.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_draw_in_their_own_precision(dtype):
    whole = torch.empty(700, 900, dtype=dtype)
    fill_elementwise(DISTS[1], whole, 2)
    part = torch.empty(300, 500, dtype=dtype)
    fill_elementwise(DISTS[1], part, 2, shape=(700, 900), offset=(400, 400))
    assert torch.equal(part, whole[400:, 400:])
    assert whole.min() >= -2.0 and whole.max() <= 0.5


def test_a_scalar_and_an_empty_tensor():
    scalar = torch.empty(())
    fill_elementwise(NORMAL, scalar, 5)
    again = torch.empty(())
    fill_elementwise(NORMAL, again, 5)
    assert torch.equal(scalar, again) and torch.isfinite(scalar)
    empty = torch.empty(0, 4)
    before = empty._version
    fill_elementwise(NORMAL, empty, 5)
    assert empty._version == before


def test_tiles_are_independent_draws():
    t = torch.empty(1024, 1024)
    fill_elementwise(NORMAL, t, 9)
    blocks = [t[r:r + 512, c:c + 512].reshape(-1)
              for r, c in itertools.product((0, 512), (0, 512))]
    corr = torch.corrcoef(torch.stack(blocks))
    off = corr[~torch.eye(4, dtype=torch.bool)]
    assert off.abs().max() < 6 / math.sqrt(512 * 512)
    assert abs(float(t.mean())) < 6 / 1024 and abs(float(t.std()) - 1) < 6 / 1024
