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
#: longest side of a tile along any dimension but the first (fixed, as :data:`TILE`)
EDGE = 512


def tile_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The tile of a tensor of ``shape``, from the last dimension to the first: each side is
    the dimension's size, at most what is left of :data:`TILE` and — unless the dimensions
    before it are too few to fill a tile — at most :data:`EDGE`. So a 1-D tensor, or one
    with short rows, is cut in row ranges, a wide matrix in 512 x 512 squares."""
    sides, left = [1] * len(shape), TILE
    for dim in range(len(shape) - 1, -1, -1):
        lead = math.prod(min(n, TILE) for n in shape[:dim]) or 1
        cap = max(EDGE, left // min(lead, left))
        sides[dim] = max(1, min(shape[dim], cap, left))
        left = max(1, left // sides[dim])
    return tuple(sides)


def overlapping_tiles(shape: Sequence[int], offset: Sequence[int], size: Sequence[int]
                      ) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """``(index, first, end)`` in global indices of each tile of a tensor of ``shape`` that the
    region ``[offset, offset + size)`` overlaps, in row-major order (none if it is empty)."""
    if math.prod(size) == 0:
        return []
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


__all__ = ["EDGE", "TILE", "drawn_elements", "overlapping_tiles", "tile_shape"]
