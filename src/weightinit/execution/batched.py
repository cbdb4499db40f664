"""Unseeded elementwise fills of many tensors on an accelerator, drawn a few kernels at a time.

On a GPU, one ``normal_`` per tensor costs a kernel launch and Python
bookkeeping each, which for the small tensors of a model (norms, biases,
narrow projections) is far more than drawing their numbers. An unseeded run
(:class:`~.strategies.Plain`) therefore gathers the pending rule writes
whose per-element distribution is the same (same
:class:`~weightinit.maths.Elementwise` kind and arguments), on the same
device and dtype, and draws them together:

* random fills: one flat buffer of the group's elements, drawn by one
  generation call (``normal_``, ``uniform_``, or the truncated normal's
  inverse-CDF method, which reads nothing back to the host), then copied
  into every tensor by ``torch._foreach_copy_`` (a few multi-tensor
  kernels). The buffer holds at most :data:`MAX_BATCH_BYTES`; a larger
  group is drawn in several buffers;
* constants: ``torch._foreach_zero_`` for zeros, else one buffer filled
  with the value and copied the same way;
* a tensor of at least :data:`DIRECT_MIN_BYTES` is drawn on its own (one
  generation call, no copy): its launch is cheap next to its bytes, and
  the copy would cost two more passes over them.

Each tensor keeps its own storage; each is written once (its version
counter moves by one). The values are draws of the same distribution as
one fill per tensor, from the same generator, but not the same numbers:
seeded runs never come here (their values are defined block by block).

Which tensors are batched is decided by :func:`batch_target` (every plain,
floating-point tensor off the CPU): tests replace it to run the batched path
on the CPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

#: the most bytes one batch's buffers hold (the target dtype, plus the float32 work buffer
#: of a truncated normal in a lower precision); larger groups are split
MAX_BATCH_BYTES = 32 << 20

#: tensors of at least this many bytes are drawn by their own generation call
DIRECT_MIN_BYTES = 4 << 20

_FULL = (torch.float32, torch.float64)


def batch_target(tensor: Tensor) -> bool:
    """Whether an unseeded elementwise fill of ``tensor`` is drawn batched: a plain
    (no subclass such as DTensor or a fake tensor), floating-point tensor on a device
    other than the CPU and ``meta``."""
    return (tensor.device.type not in ("cpu", "meta") and tensor.is_floating_point()
            and type(tensor) in (Tensor, nn.Parameter))


def _element_bytes(dist: Any, dtype: torch.dtype) -> int:
    size = torch.empty(0, dtype=dtype).element_size()
    if dist.kind == "trunc_normal" and dtype not in _FULL:
        size += 4  # the inverse-CDF method's float32 work buffer
    return size


class Batches:
    """The pending batched writes of one :meth:`~.strategies.Plain.write_many` call,
    grouped by (distribution, device, dtype); :meth:`flush` draws them."""

    def __init__(self) -> None:
        self.groups: dict[tuple[Any, torch.device, torch.dtype], list[Tensor]] = {}
        self.ids: set[int] = set()

    def add(self, tensor: Tensor, dist: Any) -> None:
        """Queue ``tensor`` (non-empty, :func:`batch_target`) to be filled with ``dist``;
        checks (and warns about) ``dist`` now, as its fill would."""
        if id(tensor) in self.ids:  # written again: the earlier write goes first
            self.flush()
        dist.check()
        self.groups.setdefault((dist, tensor.device, tensor.dtype), []).append(tensor)
        self.ids.add(id(tensor))

    def flush(self) -> None:
        """Draw every queued group, in the order the groups were first queued."""
        groups, self.groups, self.ids = self.groups, {}, set()
        for (dist, _, dtype), tensors in groups.items():
            draw_group(dist, tensors, dtype)


def draw_group(dist: Any, tensors: list[Tensor], dtype: torch.dtype) -> None:
    """Fill every tensor of ``tensors`` (same device, ``dtype``) with ``dist``."""
    with torch.no_grad():
        _draw_group(dist, tensors, dtype)


def _draw_group(dist: Any, tensors: list[Tensor], dtype: torch.dtype) -> None:
    if not dist.random and dist.args[0] == 0 and math.copysign(1.0, dist.args[0]) > 0:
        torch._foreach_zero_(tensors)
        return
    size = _element_bytes(dist, dtype)
    chunk: list[Tensor] = []
    total = 0
    for t in tensors:
        n = t.numel()
        if n * t.element_size() >= DIRECT_MIN_BYTES:
            dist.draw_(t)
            continue
        if chunk and (total + n) * size > MAX_BATCH_BYTES:
            _draw_chunk(dist, chunk, total)
            chunk, total = [], 0
        chunk.append(t)
        total += n
    if chunk:
        _draw_chunk(dist, chunk, total)


def _draw_chunk(dist: Any, tensors: list[Tensor], total: int) -> None:
    if len(tensors) == 1:
        dist.draw_(tensors[0])
        return
    first = tensors[0]
    flat = torch.empty(total, dtype=first.dtype, device=first.device)
    dist.draw_(flat)
    pieces = flat.split([t.numel() for t in tensors])
    torch._foreach_copy_(tensors, [p.view(t.shape) for p, t in zip(pieces, tensors)])


__all__ = ["DIRECT_MIN_BYTES", "MAX_BATCH_BYTES", "Batches", "batch_target", "draw_group"]
