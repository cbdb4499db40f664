"""The one write primitive: fill a rectangular region of a logical tensor from a distribution
under a key.

A fill of independent draws (normal, truncated normal, uniform and the
presets built on them) of a tensor of shape ``S`` is cut into fixed
N-dimensional tiles (:func:`tile_shape`, a function of ``S`` alone). Tile
``i`` — numbered row-major over the grid of tiles — is drawn as
``dist.draw_`` into a contiguous buffer of the tile's shape, from its own
generator seeded by (key, ``i``) (:func:`tile_seed`). Any rectangular region
of the tensor is then drawn on its own, to the same values, by drawing only
the tiles it overlaps: a whole tensor in one process, the pieces threads
share out, a rank's shard on any placement (``Shard`` on any dimension,
``_StridedShard``, uneven chunks) and a fill user code makes are all the
same :class:`RegionFill`.

Tiles are bands of whole rows, at most :data:`TILE` elements, so a region's
boundary costs at most one band of extra draws, and every tile of a
contiguous tensor is a contiguous range, drawn in place. Where a region cuts
rows (a row-parallel shard), the tiles it overlaps are drawn into a scratch
buffer (one tile per thread at most) and the region's part copied. Neither
the thread count nor the region changes a value.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..compat import bump_version
from ..planning.tiling import TILE, drawn_elements, overlapping_tiles, tile_shape


def tile_seed(key: int, index: int) -> int:
    """The generator seed of tile ``index`` of a fill under ``key`` (a tensor of one tile
    draws what the earlier one-block scheme drew)."""
    digest = hashlib.sha256(f"{key}|block|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def uncounted_alias(t: Tensor) -> Tensor:
    """A view of ``t``'s memory with its own version counter, so the tiles' writes count as
    one write of ``t`` (bumped once, in :meth:`RegionFill.done`)."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


class Scratch:
    """One tile's buffer per thread, reused by every tile a thread draws off its place, for
    the duration of one batch of fills (the extra memory of a fill: a tile per thread)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, size: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        nbytes = math.prod(size) * dtype.itemsize
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.device != device or buf.numel() < nbytes:
            buf = self._local.buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return buf[:nbytes].view(dtype).view(size)


class RegionFill:
    """The region ``[offset, offset + out.shape)`` of a fill of ``dist`` over a tensor of
    ``shape`` under ``key``, written into ``out``: one job per tile it overlaps.

    ``dist`` is a :class:`~weightinit.maths.Elementwise` (random; checked by the caller).
    """

    def __init__(self, dist: Any, out: Tensor, key: int, shape: Sequence[int] | None = None,
                 offset: Sequence[int] | None = None) -> None:
        self.dist, self.out, self.key = dist, out, key
        self.shape = tuple(out.shape) if shape is None else tuple(shape)
        self.offset = (0,) * len(self.shape) if offset is None else tuple(offset)
        #: bump ``out``'s version counter once when done (False: the caller's in-place op
        #: does, as when user code's ``normal_`` is drawn this way)
        self.count_write = True
        self.alias = uncounted_alias(out)
        #: the region is the whole tensor
        self.whole = self.shape == tuple(out.shape) and not any(self.offset)

    def tiles(self) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
        return overlapping_tiles(self.shape, self.offset, tuple(self.out.shape))

    def draw(self, index: int, first: tuple[int, ...], end: tuple[int, ...],
             scratch: Scratch | None = None) -> None:
        """Draw tile ``index`` and write the part of it inside the region (through a buffer
        of ``scratch`` when the tile is not drawn in place)."""
        gen = generator(self.out.device, tile_seed(self.key, index))
        if self.whole and end == self.shape and not any(first):  # one tile: all of it
            self.dist.draw_(self.alias, gen)
            return
        lo = tuple(max(f, o) for f, o in zip(first, self.offset))
        hi = tuple(min(e, o + n) for e, o, n in zip(end, self.offset, self.out.shape))
        dst = self.alias[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, self.offset))]
        if lo == first and hi == end and dst.is_contiguous():
            self.dist.draw_(dst, gen)
            return
        size = tuple(e - f for f, e in zip(first, end))
        tile = scratch.get(size, dst.dtype, dst.device) if scratch is not None else \
            torch.empty(size, dtype=dst.dtype, device=dst.device)
        self.dist.draw_(tile, gen)
        dst.copy_(tile[tuple(slice(a - f, b - f) for a, b, f in zip(lo, hi, first))])

    def jobs(self, scratch: Scratch | None = None) -> list[tuple[Callable[[], None], int]]:
        """One job per tile, with its cost (elements drawn)."""
        return [(lambda t=t: self.draw(*t, scratch),
                 math.prod(e - f for f, e in zip(t[1], t[2]))) for t in self.tiles()]

    def done(self) -> None:
        if self.count_write and self.out.numel():
            bump_version(self.out)


__all__ = ["TILE", "RegionFill", "Scratch", "drawn_elements", "generator", "overlapping_tiles",
           "tile_seed", "tile_shape"]
