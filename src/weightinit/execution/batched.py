"""Elementwise fills of many tensors on an accelerator, drawn a few kernels at a time.

On a GPU, one ``normal_`` per tensor costs a kernel launch and Python
bookkeeping each, which for the small tensors of a model (norms, biases,
narrow projections) is far more than drawing their numbers. A run
(:class:`~.strategies.Plain`) therefore gathers the pending unseeded rule
fills, and every constant fill (seeded or not, rule or default: the values
are the same), on the same device and dtype, by kind of
:class:`~weightinit.maths.Elementwise`, and draws them together:

* random fills of one kind (normal, uniform or truncated normal): one flat
  buffer of the group's elements, drawn by one generation call, then copied
  into every tensor by ``torch._foreach_copy_`` (a few multi-tensor
  kernels). When the group's tensors all have one distribution the buffer
  is drawn from it (``normal_(mean, std)``, ``uniform_(a, b)``, or the
  truncated normal's inverse-CDF method, which reads nothing back to the
  host); otherwise (a Kaiming rule's std differs with each shape's fan) it
  is drawn standard (N(0, 1), U(0, 1)) in float32 or wider and each piece
  is scaled and shifted to its own distribution by ``torch._foreach_*``
  ops, the truncated normal mapping each piece's uniform draws to its own
  range before one ``erfinv_`` and clamping each to its own bounds. The
  buffer holds at most :data:`MAX_BATCH_BYTES`; a larger group is drawn in
  several buffers;
* constants, by value: ``torch._foreach_zero_`` for zeros, else one buffer
  filled with the value and copied the same way;
* a tensor of at least :data:`DIRECT_MIN_BYTES` is drawn on its own (one
  generation call, no copy): its launch is cheap next to its bytes, and
  the copy would cost two more passes over them.

Each tensor keeps its own storage (an ordinary parameter to optimizers,
``state_dict``, FSDP2 and ``torch.compile``, not a view of a shared one);
each is written once (its version counter moves by one). The values are
draws of the same distribution as one fill per tensor, from the same
generator, but not the same numbers: seeded random fills never come here
(their values are defined block by block).

Which tensors are batched is decided by :func:`batch_target` (every plain,
floating-point tensor off the CPU): tests replace it to run the batched path
on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..maths import Elementwise
from ..maths.fills import erfinv_range
from ..planning.recorded import uniform_value

#: the most bytes one batch's buffers hold (the target dtype, plus the float32 work buffer
#: of a truncated normal in a lower precision); larger groups are split
MAX_BATCH_BYTES = 32 << 20

#: tensors of at least this many bytes are drawn by their own generation call
DIRECT_MIN_BYTES = 4 << 20

#: a kind with at most this many distinct distributions in a group is drawn one
#: distribution at a time (as many kernels as the scaled draw, fewer passes)
SEPARATE_MAX = 2

_FULL = (torch.float32, torch.float64)


def batch_target(tensor: Tensor) -> bool:
    """Whether elementwise fills of ``tensor`` (unseeded random ones, and constants) are
    drawn batched: a plain (no subclass such as DTensor or a fake tensor), dense,
    floating-point tensor on a device other than the CPU and ``meta``."""
    return (tensor.device.type not in ("cpu", "meta") and tensor.is_floating_point()
            and type(tensor) in (Tensor, nn.Parameter) and tensor.layout == torch.strided)


def _element_bytes(kind: str, dtype: torch.dtype) -> int:
    size = torch.empty(0, dtype=dtype).element_size()
    if kind != "constant" and dtype not in _FULL:
        size += 4  # the float32 work buffer of scaled draws and of the inverse-CDF method
    return size


#: a queued write: the tensor and its distribution
Item = tuple[Tensor, Elementwise]


class Batches:
    """The pending batched writes of one :meth:`~.strategies.Plain.write_many` call,
    grouped by device, dtype and kind of distribution (constants: by value);
    :meth:`flush` draws them."""

    def __init__(self) -> None:
        self.groups: dict[tuple[Any, torch.device, torch.dtype], list[Item]] = {}
        self.ids: set[int] = set()

    def add(self, tensor: Tensor, dist: Elementwise) -> None:
        """Queue ``tensor`` (non-empty, :func:`batch_target`) to be filled with ``dist``;
        checks (and warns about) ``dist`` now, as its fill would."""
        if id(tensor) in self.ids:  # written again: the earlier write goes first
            self.flush()
        dist.check()
        # constants by value (0.0 and -0.0 apart: they compare equal)
        key = dist.kind if dist.random else (dist.args[0], math.copysign(1.0, dist.args[0]))
        self.groups.setdefault((key, tensor.device, tensor.dtype), []).append((tensor, dist))
        self.ids.add(id(tensor))

    def flush(self) -> None:
        """Draw every queued group, in the order the groups were first queued."""
        groups, self.groups, self.ids = self.groups, {}, set()
        for (_, _, dtype), items in groups.items():
            draw_items(items, dtype)


def draw_group(dist: Elementwise, tensors: list[Tensor], dtype: torch.dtype) -> None:
    """Fill every tensor of ``tensors`` (same device, ``dtype``) with ``dist``."""
    draw_items([(t, dist) for t in tensors], dtype)


def draw_items(items: list[Item], dtype: torch.dtype) -> None:
    """Fill each tensor with its distribution: all on one device, of ``dtype``, and of one
    kind (normal, uniform, truncated normal, or one constant)."""
    with torch.no_grad():
        _draw_items(items, dtype)


def _draw_items(items: list[Item], dtype: torch.dtype) -> None:
    dist = items[0][1]
    if not dist.random and dist.args[0] == 0 and math.copysign(1.0, dist.args[0]) > 0:
        torch._foreach_zero_([t for t, _ in items])
        return
    if dist.random:
        by_dist: dict[Elementwise, list[Item]] = {}
        for item in items:
            by_dist.setdefault(item[1], []).append(item)
        if 1 < len(by_dist) <= SEPARATE_MAX:  # a draw and a copy each: no scaling passes
            for group in by_dist.values():
                _draw_items(group, dtype)
            return
    small: list[Item] = []
    for t, d in items:
        if t.numel() * t.element_size() >= DIRECT_MIN_BYTES:
            d.draw_(t)
        else:
            small.append((t, d))
    for chunk, total in _chunked(small, _element_bytes(dist.kind, dtype)):
        _draw_chunk(chunk, total)


def _chunked(pairs: list[tuple[Tensor, Any]], size: int) -> Iterator[tuple[list, int]]:
    """``pairs`` (keyed by their first tensor's elements) in runs of at most
    :data:`MAX_BATCH_BYTES` at ``size`` bytes an element, with their element counts."""
    chunk: list = []
    total = 0
    for pair in pairs:
        n = pair[0].numel()
        if chunk and (total + n) * size > MAX_BATCH_BYTES:
            yield chunk, total
            chunk, total = [], 0
        chunk.append(pair)
        total += n
    if chunk:
        yield chunk, total


def _draw_chunk(items: list[Item], total: int) -> None:
    first, dist = items[0]
    if len(items) == 1:
        dist.draw_(first)
        return
    tensors = [t for t, _ in items]
    dists = [d for _, d in items]
    same = all(d == dist for d in dists)
    work = first.dtype if same or first.dtype in _FULL else torch.float32
    flat = torch.empty(total, dtype=work, device=first.device)
    pieces = [p.view(t.shape) for p, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
    if same:  # one distribution: drawn as such
        dist.draw_(flat)
    else:  # one kind: standard draws, then each piece's own scale and shift
        _scaled(dist.kind, flat, pieces, dists)
    torch._foreach_copy_(tensors, pieces)


def _scaled(kind: str, flat: Tensor, pieces: list[Tensor], dists: list[Elementwise]) -> None:
    if kind == "normal":  # mean + std·z
        flat.normal_()
        torch._foreach_mul_(pieces, [d.args[1] for d in dists])
        torch._foreach_add_(pieces, [d.args[0] for d in dists])
    elif kind == "uniform":  # low + (high - low)·u
        flat.uniform_()
        torch._foreach_mul_(pieces, [d.args[1] - d.args[0] for d in dists])
        torch._foreach_add_(pieces, [d.args[0] for d in dists])
    else:  # the truncated normal's inverse-CDF method, each piece on its own range
        ranges = [erfinv_range(*d.args, sync_free=True) for d in dists]
        flat.uniform_()
        torch._foreach_mul_(pieces, [high - low for low, high in ranges])
        torch._foreach_add_(pieces, [low for low, _ in ranges])
        flat.erfinv_()
        torch._foreach_mul_(pieces, [d.args[1] * math.sqrt(2.0) for d in dists])
        torch._foreach_add_(pieces, [d.args[0] for d in dists])
        torch._foreach_clamp_min_(pieces, [d.args[2] for d in dists])
        torch._foreach_clamp_max_(pieces, [d.args[3] for d in dists])


def move_target(tensor: Tensor, device: torch.device) -> bool:
    """Whether moving ``tensor`` to ``device`` goes through :func:`move_all`: a plain, dense
    (strided, not quantized) host tensor bound for a device other than the CPU and ``meta``."""
    return (tensor.device.type == "cpu" and device.type not in ("cpu", "meta")
            and type(tensor) in (Tensor, nn.Parameter) and tensor.layout == torch.strided
            and not tensor.is_quantized)


def move_all(pairs: list[tuple[Tensor, Tensor]]) -> None:
    """Copy each host tensor into its freshly allocated destination on the device, a few
    kernels and one host-to-device copy per dtype for all, not one copy (and one wait on
    pageable memory) each.

    A floating-point source whose elements are one constant (BatchNorm's running
    statistics, ``torch.ones`` scales) is filled on the device, copying nothing; other
    small sources of one (source, destination) dtype pair are packed into one host
    buffer, copied once, and split into their tensors (``torch._foreach_copy_``,
    which converts the dtype on the device); a source of at
    least :data:`DIRECT_MIN_BYTES` is copied on its own. The values are those of
    ``source.to(device, dtype)``.
    """
    constants = Batches()
    packed: dict[tuple[torch.dtype, torch.dtype], list[tuple[Tensor, Tensor]]] = {}
    with torch.no_grad():
        for src, dst in pairs:
            if not src.numel():
                continue
            dist = uniform_value(src) if dst.is_floating_point() else None
            if dist is not None:
                constants.add(dst, dist)
            elif src.numel() * max(src.element_size(), dst.element_size()) >= DIRECT_MIN_BYTES:
                dst.copy_(src)
            else:
                packed.setdefault((src.dtype, dst.dtype), []).append((src, dst))
        constants.flush()
        for items in packed.values():
            src, dst = items[0]
            for chunk, _ in _chunked(items, max(src.element_size(), dst.element_size())):
                _move_chunk(chunk)


def _move_chunk(chunk: list[tuple[Tensor, Tensor]]) -> None:
    """One packed host buffer (the sources' dtype), one copy to the device, and one
    multi-tensor copy (converting to the destinations' dtype there)."""
    if len(chunk) == 1:
        chunk[0][1].copy_(chunk[0][0])
        return
    host = torch.cat([src.detach().reshape(-1) for src, _ in chunk])
    dsts = [dst for _, dst in chunk]
    flat = host.to(dsts[0].device)
    pieces = flat.split([d.numel() for d in dsts])
    torch._foreach_copy_(dsts, [p.view(d.shape) for p, d in zip(pieces, dsts)])


__all__ = ["DIRECT_MIN_BYTES", "MAX_BATCH_BYTES", "Batches", "batch_target", "draw_group",
           "draw_items", "move_all", "move_target"]
