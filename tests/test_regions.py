"""Which elements of a sharded tensor a rank holds (``local_region``), checked without processes.

The regions weightinit computes itself (:mod:`weightinit.planning.regions`)
are compared with the shards torch's own placements cut from an ``arange``
tensor, mesh dimension by mesh dimension as ``distribute_tensor`` does, for
every rank of meshes of 1, 2 and 3 dimensions, and with DTensor's local
shapes and offsets. ``local_region`` itself is run on stand-ins for a
DTensor (real placements, a mesh that only knows its shape and this rank's
coordinate), and ``write_shard`` on them.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit import compat
from weightinit import maths as F
from weightinit.execution import tiles
from weightinit.execution.seeding import derive_seed, fill_elementwise
from weightinit.execution.sharding import write_shard
from weightinit.planning.layout import local_region
from weightinit.planning.ops import Role, RuleFill
from weightinit.planning.regions import chunk_span, compute_region, strided_conflict

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
dt = compat.dtensor_module()
Shard, Replicate, Partial = dt.Shard, dt.Replicate, dt.Partial
StridedShard = compat.strided_shard_type()


def _split(placement, tensor: torch.Tensor, parts: int, index: int) -> torch.Tensor:
    """torch's own cut of ``tensor`` for one mesh dimension (what distribute_tensor keeps)."""
    shards, _ = placement._split_tensor(tensor, parts, with_padding=False, contiguous=True)
    return shards[index]


def _torch_local(shape, mesh_shape, coord, placements) -> torch.Tensor:
    local = torch.arange(math.prod(shape)).view(shape)
    for mesh_dim, placement in enumerate(placements):
        if not isinstance(placement, Replicate):
            local = _split(placement, local, mesh_shape[mesh_dim], coord[mesh_dim])
    return local


def _assembled(region, shape) -> torch.Tensor:
    """The local tensor the region describes, made of the global ``arange``'s elements."""
    whole = torch.arange(math.prod(shape)).view(shape)
    local = torch.full(region.local_shape, -1, dtype=whole.dtype)
    for box in region.boxes:
        local[box.local_index] = whole[box.index]
    return local


def _splits(placements) -> list[tuple]:
    out = []
    for p in placements:
        if StridedShard is not None and isinstance(p, StridedShard):
            out.append(("strided", p.dim, int(p.split_factor)))
        elif isinstance(p, Replicate):
            out.append(("replicate",))
        else:
            out.append(("shard", p.dim))
    return out


def _options() -> list:
    options = [Replicate(), Shard(0), Shard(1)]
    if StridedShard is not None:
        options += [StridedShard(0, split_factor=2), StridedShard(1, split_factor=3)]
    return options


MESHES = [(4,), (3,), (2, 2), (3, 2), (2, 1, 2), (1, 2, 2)]
SHAPES = [(5, 7), (10, 6), (7, 3), (3, 5, 4), (0, 4)]


@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_regions_are_the_shards_torch_cuts(mesh_shape):
    compared = total = 0
    for placements in itertools.product(_options(), repeat=len(mesh_shape)):
        for shape in SHAPES:
            for coord in itertools.product(*(range(n) for n in mesh_shape)):
                total += 1
                try:
                    expected = _torch_local(shape, mesh_shape, coord, placements)
                except (AssertionError, RuntimeError):  # an older torch: even splits only
                    continue
                region = compute_region(shape, mesh_shape, coord, _splits(placements))
                assert region.local_shape == tuple(expected.shape), (placements, shape, coord)
                assert torch.equal(_assembled(region, shape), expected), \
                    (placements, shape, coord, region.boxes)
                compared += 1
    # most cases, even where an older torch cuts only even splits (and has no _StridedShard)
    assert compared >= max(30, total // 2), (compared, total)


def test_local_shapes_and_offsets_agree_with_dtensor():
    utils = pytest.importorskip("torch.distributed.tensor._utils")
    compute = getattr(utils, "_compute_local_shape_and_global_offset", None)
    if compute is None:
        pytest.skip("this torch has no _compute_local_shape_and_global_offset")
    for mesh_shape in MESHES:
        for placements in itertools.product(_options(), repeat=len(mesh_shape)):
            for shape in SHAPES[:3]:
                for coord in itertools.product(*(range(n) for n in mesh_shape)):
                    try:
                        local, offset = compute(shape, mesh_shape, list(coord), placements)
                    except (AssertionError, RuntimeError, TypeError):
                        continue
                    region = compute_region(shape, mesh_shape, coord, _splits(placements))
                    assert region.local_shape == tuple(local), (placements, shape, coord)
                    if region.boxes:  # DTensor's offset: where the first box starts
                        assert region.boxes[0].offset == tuple(offset), (placements, coord)


def test_boxes_are_ordered_and_placed_in_the_local_tensor():
    # 10 rows, _StridedShard(0, split_factor=2) over 4: rows [0,1] and [5,6] on rank 0
    region = compute_region((10, 6), (4,), (0,), [("strided", 0, 2)])
    assert [(b.offset, b.shape, b.local) for b in region.boxes] == [
        ((0, 0), (2, 6), (0, 0)), ((5, 0), (2, 6), (2, 0))]
    # each half of 5 rows is cut 2, 2, 1, 0: the last rank holds nothing
    assert compute_region((10, 6), (4,), (2,), [("strided", 0, 2)]).local_shape == (2, 6)
    assert compute_region((10, 6), (4,), (3,), [("strided", 0, 2)]).local_shape == (0, 6)
    # a 2x2 tiling: one box; a rank past the end of a dimension: none
    tile = compute_region((5, 7), (2, 2), (1, 1), [("shard", 0), ("shard", 1)])
    assert [(b.offset, b.shape) for b in tile.boxes] == [((3, 4), (2, 3))]
    assert compute_region((3, 5), (4,), (3,), [("shard", 0)]).boxes == ()


def test_fsdp2_over_tp_layouts_torch_reads_another_way_are_found_on_every_rank():
    # FSDP2 chunks each tensor-parallel shard again; DTensor reads the label left to right
    for size, dp, tp in itertools.product(range(0, 40), range(1, 5), range(1, 5)):
        splits = (("strided", 0, tp), ("shard", 0))
        disagree = False
        for i, j in itertools.product(range(dp), range(tp)):
            a, b = chunk_span(size, tp, j)
            lo, hi = chunk_span(b - a, dp, i)
            held = [(a + lo, a + hi)] if hi > lo else []
            read = compute_region((size,), (dp, tp), (i, j), splits).runs[0]
            disagree |= [(r.start, r.start + r.length) for r in read] != held
        assert (strided_conflict(size, (dp, tp), splits, 0) is not None) == disagree, \
            (size, dp, tp)
    assert strided_conflict(9, (4, 2), (("strided", 0, 2), ("shard", 0)), 0) is not None
    assert strided_conflict(1022, (2, 2), (("strided", 0, 2), ("shard", 0)), 0) is None


# -- local_region and write_shard on stand-ins for a DTensor ----------------------------------

def _fake(shape, mesh_shape, coord, placements, local_shape=None, device="cpu"):
    """What local_region reads of a DTensor: shape, placements, mesh, local tensor."""
    if local_shape is None:
        local_shape = compute_region(shape, mesh_shape, coord, _splits(placements)).local_shape
    local = torch.empty(local_shape, device=device)
    mesh = SimpleNamespace(ndim=len(mesh_shape), size=lambda i: mesh_shape[i],
                           get_coordinate=lambda: list(coord) if coord is not None else None)
    return SimpleNamespace(shape=torch.Size(shape), dim=lambda: len(shape),
                           placements=tuple(placements), device_mesh=mesh,
                           _local_tensor=local)


def test_local_region_reads_placements_and_checks_the_local_shape():
    # mesh dim 0 (coordinate 1) takes columns 4..6, mesh dim 1 (coordinate 0) rows 0..2
    region = local_region(_fake((5, 7), (2, 2), (1, 0), [Shard(1), Shard(0)]), "w")
    assert [(b.offset, b.shape, b.local) for b in region.boxes] == [((0, 4), (3, 3), (0, 0))]
    assert local_region(_fake((5, 7), (4,), None, [Shard(0)], (0,)), "w").boxes == ()
    with pytest.raises(wi.ShardingError, match=r"^w: its local shard has shape \(2, 7\)"):
        local_region(_fake((5, 7), (2,), (0,), [Shard(0)], (2, 7), "meta"), "w")


def test_partial_is_refused_naming_the_tensor_placement_and_fix():
    with pytest.raises(wi.ShardingError) as err:
        local_region(_fake((4, 4), (2, 2), (0, 0), [Shard(0), Partial()], (2, 4)), "m.w")
    message = str(err.value)
    assert message.startswith("m.w: placement Partial(sum) is not supported")
    assert "Fix: initialize before applying this layout" in message


@pytest.mark.skipif(StridedShard is None, reason="this torch has no _StridedShard")
def test_a_layout_fsdp2_and_dtensor_read_differently_is_refused():
    # 9 rows, tp=2 then dp=4: FSDP2 leaves row 8 on (3, 1), DTensor reads it on (3, 0)
    placements = [StridedShard(0, split_factor=2), Shard(0)]
    fake = _fake((9, 4), (4, 2), (0, 0), placements)
    with pytest.raises(wi.ShardingError, match=r"^up.weight: placements .* read two ways") as err:
        local_region(fake, "up.weight")
    assert "Fix: make that dimension divisible" in str(err.value)


def _drawn(monkeypatch) -> list[int]:
    """Element counts of the seeded tiles drawn (whole or cut) from now on."""
    counts: list[int] = []
    draw = tiles.RegionFill.draw

    def counting(self, index, first, end, scratch=None):
        counts.append(math.prod(e - f for f, e in zip(first, end)))
        return draw(self, index, first, end, scratch)

    monkeypatch.setattr(tiles.RegionFill, "draw", counting)
    return counts


def _no_whole_temporaries(monkeypatch, shape) -> None:
    """Make any allocation of the whole tensor's shape an error from now on."""
    empty = torch.empty

    def guarded(*size, **kwargs):
        dims = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        assert tuple(dims) != tuple(shape), "a whole-tensor temporary was allocated"
        return empty(*size, **kwargs)

    monkeypatch.setattr(torch, "empty", guarded)


@pytest.mark.skipif(StridedShard is None, reason="this torch has no _StridedShard")
def test_write_shard_draws_only_the_tiles_its_row_boxes_overlap(monkeypatch):
    shape = (6000, 1000)  # bands of 262 rows; each rank holds two boxes of 750 rows
    total = math.prod(shape)
    op = RuleFill(wi.rules.NormalInit(std=0.5), Role.WEIGHT, nn.Linear(1, 1), "test")
    whole = torch.empty(shape)
    fill_elementwise(op.elementwise(shape), whole, derive_seed(9, "w", op.seed_key))
    drawn = _drawn(monkeypatch)
    for rank in range(4):
        drawn.clear()
        fake = _fake(shape, (4,), (rank,), [StridedShard(0, split_factor=2)])
        write_shard(fake, op, 9, "w")
        boxes = local_region(fake, "w").boxes
        assert len(boxes) == 2
        for box in boxes:
            assert torch.equal(fake._local_tensor[box.local_index], whole[box.index])
        # only the tiles its boxes overlap, each drawn once: not the whole tensor
        expected = sum(tiles.drawn_elements(shape, b.offset, b.shape) for b in boxes)
        assert sum(drawn) == expected < total
        # its rows plus at most one band (261 rows) at each of its 4 box edges
        assert expected <= 1500 * 1000 + 4 * 261 * 1000


@pytest.mark.parametrize("placements,mesh", [
    ([Shard(1)], (4,)),                 # row-parallel: columns
    ([Shard(0), Shard(1)], (2, 2)),     # 2-D tiling
    ([Replicate(), Shard(1)], (2, 2)),  # HSDP-like over columns
])
@pytest.mark.parametrize("rule", [wi.rules.NormalInit(std=0.5),
                                  wi.rules.TruncNormalInit(std=1.0, a=-1.0, b=0.5),
                                  wi.rules.KaimingInit(distribution="uniform")])
def test_non_contiguous_shards_draw_only_their_tiles(monkeypatch, placements, mesh, rule):
    shape = (1300, 2100)  # uneven: 2100 columns over 4 (525 each) or 2 (1050)
    op = RuleFill(rule, Role.WEIGHT, nn.Linear(2100, 1300), "test")
    whole = torch.empty(shape)
    fill_elementwise(op.elementwise(shape), whole, derive_seed(2, "w", op.seed_key))
    drawn = _drawn(monkeypatch)
    _no_whole_temporaries(monkeypatch, shape)
    assembled = torch.full(shape, float("nan"))
    for coord in itertools.product(*(range(n) for n in mesh)):
        drawn.clear()
        fake = _fake(shape, mesh, coord, placements)
        write_shard(fake, op, 2, "w")
        region = local_region(fake, "w")
        for box in region.boxes:
            assembled[box.index] = fake._local_tensor[box.local_index]
        local = region.numel
        # exactly the tiles its boxes overlap: its elements, plus at most one tile's side
        # along each box edge (a column cut crosses whole rows)
        sides = tiles.tile_shape(shape)
        assert sum(drawn) == sum(tiles.drawn_elements(shape, b.offset, b.shape)
                                 for b in region.boxes), coord
        edges = sum(2 * (sides[d] - 1) * (box.numel // box.shape[d]) for box in region.boxes
                    for d in range(2) if box.shape[d] < shape[d])
        assert local <= sum(drawn) <= local + edges, coord
    assert torch.equal(assembled, whole)


@pytest.mark.parametrize("rule,shape,module", [
    (wi.rules.EyeInit(), (9, 13), nn.Linear(13, 9)),
    (wi.rules.DiracInit(), (8, 4, 3, 3), nn.Conv2d(4, 8, 3, groups=2)),
    (wi.rules.DiracInit(groups=1), (6, 6, 5), nn.Conv1d(6, 6, 5)),
])
def test_structured_rules_write_each_shard_directly(monkeypatch, rule, shape, module):
    op = RuleFill(rule, Role.WEIGHT, module, "test")
    whole = torch.empty(shape)
    op.write(whole)
    _no_whole_temporaries(monkeypatch, shape)
    for placements, mesh in (([Shard(1)], (4,)), ([Shard(0), Shard(1)], (2, 2)),
                             ([Shard(len(shape) - 1)], (3,))):
        assembled = torch.full(shape, float("nan"))
        for coord in itertools.product(*(range(n) for n in mesh)):
            fake = _fake(shape, mesh, coord, placements)
            write_shard(fake, op, 5, "w")
            for box in local_region(fake, "w").boxes:
                assembled[box.index] = fake._local_tensor[box.local_index]
        assert torch.equal(assembled, whole), placements


def test_write_shard_of_column_tiles_equals_the_whole_tensor():
    shape = (7, 5)
    op = RuleFill(wi.rules.UniformInit(a=-1, b=2), Role.WEIGHT, nn.Linear(1, 1), "test")
    whole = torch.empty(shape)
    fill_elementwise(op.elementwise(shape), whole, derive_seed(3, "t", op.seed_key))
    assembled = torch.full(shape, float("nan"))
    for coord in itertools.product(range(2), range(2)):
        fake = _fake(shape, (2, 2), coord, [Shard(1), Shard(0)])
        write_shard(fake, op, 3, "t")
        for box in local_region(fake, "t").boxes:
            assembled[box.index] = fake._local_tensor[box.local_index]
    assert torch.equal(assembled, whole)


def test_constant_fill_of_several_boxes():
    if StridedShard is None:
        pytest.skip("this torch has no _StridedShard")
    op = RuleFill(wi.rules.ConstantInit(val=0.75), Role.WEIGHT, nn.Linear(1, 1), "test")
    assert op.elementwise((10, 3)) == F.Elementwise("constant", (0.75,))
    fake = _fake((10, 3), (4,), (1,), [StridedShard(0, split_factor=2)])
    write_shard(fake, op, 1, "c")
    assert torch.equal(fake._local_tensor, torch.full((4, 3), 0.75))
