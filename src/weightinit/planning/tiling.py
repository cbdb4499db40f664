"""The fixed tiles seeded fills are drawn in: their shape and which a region overlaps.

Pure arithmetic on shapes (no tensor): the write primitive
(:mod:`weightinit.execution.tiles`) draws these tiles, and planning counts
what a rank will draw (:mod:`.meshplan`) with the same functions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

#: most elements in one tile (fixed: changing it changes every seeded value)
TILE = 1 << 18


def tile_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The tile of a tensor of ``shape``: as many whole trailing rows as fit in :data:`TILE`
    elements — from the last dimension to the first, each side is the dimension's size, at
    most what is left of :data:`TILE`. A matrix is cut in bands of whole rows (a row longer
    than a tile in pieces of it), a 1-D tensor in ranges: every tile of a contiguous tensor
    is one contiguous range, and a shard of whole rows (FSDP2, HSDP, column-parallel
    weights) draws its rows and at most one band more at each end."""
    sides, left = [1] * len(shape), TILE
    for dim in range(len(shape) - 1, -1, -1):
        sides[dim] = max(1, min(shape[dim], left))
        left = max(1, left // sides[dim])
    return tuple(sides)


def overlapping_tiles(shape: Sequence[int], offset: Sequence[int], size: Sequence[int]
                      ) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """``(index, first, end)`` in global indices of each tile of a tensor of ``shape`` that the
    region ``[offset, offset + size)`` overlaps, in row-major order (none if it is empty)."""
    if math.prod(size) == 0:
        return []
    if math.prod(shape) <= TILE:  # one tile, the whole tensor (as tile_shape gives it)
        return [(0, (0,) * len(shape), tuple(shape))]
    sides = tile_shape(shape)
    grid = [-(-n // s) for n, s in zip(shape, sides)]
    ranges = [range(o // s, (o + n - 1) // s + 1) for o, n, s in zip(offset, size, sides)]
    found = []
    for cell in itertools.product(*ranges):
        index = 0
        for c, g in zip(cell, grid):
            index = index * g + c
        first = tuple(c * s for c, s in zip(cell, sides))
        end = tuple(min(f + s, n) for f, s, n in zip(first, sides, shape))
        found.append((index, first, end))
    return found


def drawn_elements(shape: Sequence[int], offset: Sequence[int], size: Sequence[int]) -> int:
    """Elements drawn to fill the region ``[offset, offset + size)`` of a tensor of ``shape``:
    the tiles it overlaps, whole (what a shard pays, boundary tiles included)."""
    return sum(math.prod(e - f for f, e in zip(first, end))
               for _, first, end in overlapping_tiles(shape, offset, size))


def scratch_elements(shape: Sequence[int], offset: Sequence[int], size: Sequence[int]) -> int:
    """Elements of the buffer a fill of the region needs: a tile's, if some tile it overlaps
    sticks out of it (drawn whole into the buffer, its inside part copied), else 0."""
    end = [o + n for o, n in zip(offset, size)]
    for _, first, last in overlapping_tiles(shape, offset, size):
        if any(f < o or e > x for f, e, o, x in zip(first, last, offset, end)):
            return math.prod(tile_shape(shape))
    return 0


__all__ = ["TILE", "drawn_elements", "overlapping_tiles", "scratch_elements", "tile_shape"]
