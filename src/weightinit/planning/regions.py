"""Which elements of a sharded tensor one rank holds: integer arithmetic, no torch.

A DTensor's placements are applied left to right, one mesh dimension at a
time, each splitting the tensor dimension it names as its rank's part of
what the placements before it left (DTensor's own convention, the one
``full_tensor()`` reassembles by):

* ``Shard(d)`` splits dimension ``d`` as ``torch.chunk`` does: chunks of
  ``ceil(n / parts)``, so trailing ranks may get fewer elements, or none;
* ``_StridedShard(d, split_factor=k)`` (FSDP2 over tensor parallelism) first
  chunks dimension ``d`` into ``k`` pieces, chunks each piece into ``parts``,
  and gives rank ``i`` the ``i``-th chunk of every piece, concatenated — so
  its part may be several separate ranges;
* ``Replicate`` leaves the dimension as it is.

Along each tensor dimension a rank therefore holds an ordered list of
ranges of global indices (:class:`Run`); its local tensor is their
Cartesian product, so it is a set of rectangular :class:`Box` es, each
placed at its own offset in the local tensor.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

#: one placement as this module reads it: ``("shard", dim)``,
#: ``("strided", dim, split_factor)`` or ``("replicate",)``
Split = tuple


@dataclass(frozen=True)
class Run:
    """``length`` consecutive global indices from ``start`` along one dimension."""

    start: int
    length: int


@dataclass(frozen=True)
class Box:
    """A rectangle of the global tensor a rank holds, and where it sits in the local tensor."""

    #: first global index along each dimension
    offset: tuple[int, ...]
    shape: tuple[int, ...]
    #: first index along each dimension in the rank's local tensor
    local: tuple[int, ...]

    @property
    def index(self) -> tuple[slice, ...]:
        """The box in the global tensor, as an index."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.shape))

    @property
    def local_index(self) -> tuple[slice, ...]:
        """The box in the local tensor, as an index."""
        return tuple(slice(o, o + n) for o, n in zip(self.local, self.shape))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Region:
    """What one rank holds of a tensor of ``global_shape``: ``runs[d]`` along dimension ``d``."""

    global_shape: tuple[int, ...]
    runs: tuple[tuple[Run, ...], ...]

    @functools.cached_property
    def local_shape(self) -> tuple[int, ...]:
        return tuple(sum(r.length for r in dim) for dim in self.runs)

    @property
    def numel(self) -> int:
        return math.prod(self.local_shape)

    @functools.cached_property
    def boxes(self) -> tuple[Box, ...]:
        """The rectangles held, in the row-major order of the local tensor (none when empty)."""
        if self.numel == 0:
            return ()
        per_dim = []
        for dim in self.runs:
            placed, at = [], 0
            for run in dim:
                placed.append((run, at))
                at += run.length
            per_dim.append(placed)
        return tuple(Box(tuple(r.start for r, _ in combo), tuple(r.length for r, _ in combo),
                         tuple(at for _, at in combo))
                     for combo in itertools.product(*per_dim))


def chunk_span(size: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of chunk ``index`` when ``size`` items are split as ``torch.chunk(parts)``."""
    chunk = -(-size // parts)  # ceil: torch.chunk's chunk size
    lo = min(index * chunk, size)
    return lo, min(lo + chunk, size)


def _positions(size: int, split: Split, parts: int, index: int) -> list[tuple[int, int]]:
    """The [lo, hi) ranges of positions (into a dimension of ``size``) rank ``index`` keeps."""
    if split[0] == "shard":
        return [chunk_span(size, parts, index)]
    spans = []
    factor = split[2]
    for piece in range(factor):  # the split that, read right to left, came first
        p_lo, p_hi = chunk_span(size, factor, piece)
        lo, hi = chunk_span(p_hi - p_lo, parts, index)
        spans.append((p_lo + lo, p_lo + hi))
    return spans


def _take(runs: Sequence[Run], spans: Sequence[tuple[int, int]]) -> tuple[Run, ...]:
    """The global runs at positions ``spans`` of the sequence ``runs`` spells, merged where
    they touch."""
    out: list[Run] = []
    for lo, hi in spans:
        at = 0
        for run in runs:
            a, b = max(lo, at), min(hi, at + run.length)
            if a < b:
                start = run.start + a - at
                if out and out[-1].start + out[-1].length == start:
                    out[-1] = Run(out[-1].start, out[-1].length + b - a)
                else:
                    out.append(Run(start, b - a))
            at += run.length
    return tuple(out)


def compute_region(global_shape: Sequence[int], mesh_shape: Sequence[int],
                   coordinate: Sequence[int], splits: Sequence[Split]) -> Region:
    """The region the rank at ``coordinate`` holds when ``splits`` (one per mesh dimension,
    each ``("shard", dim)``, ``("strided", dim, split_factor)`` or ``("replicate",)``) lay
    out a tensor of ``global_shape`` over a mesh of ``mesh_shape``."""
    runs = [(Run(0, n),) if n else () for n in global_shape]
    for mesh_dim, split in enumerate(splits):
        if split[0] == "replicate":
            continue
        dim = split[1]
        size = sum(r.length for r in runs[dim])
        runs[dim] = _take(runs[dim], _positions(size, split, mesh_shape[mesh_dim],
                                                coordinate[mesh_dim]))
    return Region(tuple(global_shape), tuple(runs))


def _indices(region: Region, dim: int) -> tuple[tuple[int, int], ...]:
    return tuple((r.start, r.start + r.length) for r in region.runs[dim])


@functools.lru_cache(maxsize=256)
def strided_conflict(size: int, mesh_shape: tuple[int, ...], splits: tuple[Split, ...],
                     dim: int) -> tuple[tuple[int, ...], tuple, tuple] | None:
    """Where DTensor's reading of a ``_StridedShard`` layout of ``dim`` differs from the data
    FSDP2 over tensor parallelism put there: (mesh coordinate, DTensor's [lo, hi) ranges,
    FSDP2's), or None when they agree on every rank (or the layout is not that pattern).

    FSDP2 chunks each tensor-parallel shard again over its own mesh dimension (right to
    left) and labels the result ``_StridedShard(dim, split_factor=tp)``; DTensor reads the
    label left to right. When ``dim`` does not divide evenly the two can disagree — on some
    ranks in size, on others only in which elements — and ``full_tensor()`` then reassembles
    a different tensor than the one the ranks hold. Checked for every rank, so all of them
    refuse such a layout alike. (The placements do not say who cut the shards, so the same
    uneven layout made directly with ``distribute_tensor`` is refused too.)
    """
    strided = [m for m, s in enumerate(splits) if s[0] == "strided" and s[1] == dim]
    if len(strided) != 1:
        return None
    m = strided[0]
    later = [i for i in range(m + 1, len(splits)) if splits[i] == ("shard", dim)]
    if splits[m][2] != math.prod(mesh_shape[i] for i in later):
        return None  # not FSDP2's pattern: DTensor's reading is the only one
    involved = [i for i, s in enumerate(splits) if s[0] != "replicate" and s[1] == dim]
    before = [i for i in involved if i < m]
    nested_order = [*before, *(i for i in involved if i > m), m]
    for values in itertools.product(*(range(mesh_shape[i]) for i in involved)):
        coordinate = [0] * len(mesh_shape)
        for i, v in zip(involved, values):
            coordinate[i] = v
        dtensor = compute_region((size,), mesh_shape, coordinate,
                                 [(s[0], 0, *s[2:]) if i in involved else ("replicate",)
                                  for i, s in enumerate(splits)])
        nested = compute_region((size,), [mesh_shape[i] for i in nested_order],
                                [coordinate[i] for i in nested_order],
                                [("shard", 0)] * len(nested_order))
        if _indices(dtensor, 0) != _indices(nested, 0):
            return tuple(coordinate), _indices(dtensor, 0), _indices(nested, 0)
    return None


def empty_region(global_shape: Sequence[int]) -> Region:
    """The region of a rank that holds nothing of the tensor (not in its mesh)."""
    return Region(tuple(global_shape), tuple(() for _ in global_shape))


__all__ = ["Box", "Region", "Run", "Split", "chunk_span", "compute_region",
           "empty_region", "strided_conflict"]
