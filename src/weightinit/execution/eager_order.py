"""Unseeded deferred runs draw the constructor inits first, in eager construction's order.

Eager construction draws every tensor's default before any ``init_weights``
code runs. A deferred model's run therefore starts with a prologue that
replays, in the global order they were recorded in:

* the inits of the tensors whose default is their last planned write (no
  rule covers them) and that no user code can reach, written into the
  tensors: user ``init_weights`` code draws after them, as it does after
  eager construction;
* the inits of tensors built and then replaced (tied embeddings), drawn into
  scratch memory and dropped;
* under ``deferred(match_eager=True)``, also the inits of tensors a rule
  overwrites, into scratch, so what is drawn after them meets the generator
  where eager construction left it, and the defaults of tensors under user
  code, written into them (what user code, or a plan it makes, writes
  there afterwards writes them again, as after eager construction).

Without ``match_eager`` the defaults under user code stay pending, so one
that user code overwrites whole, or its ``super().init_weights()`` plans a
rule for, is never drawn: such runs draw other numbers than eager ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..capture.construction import Construction, construction_of
from ..planning import DefaultFill, Plan, UserCall, Write, subtree_tensors

Scratch = tuple[Construction, tuple[int, ...], torch.dtype, torch.device]


@dataclass
class Prologue:
    """What a run replays before anything else, and the steps left after it."""

    writes: tuple[Write, ...] = ()
    #: (construction, shape, dtype, device) drawn into scratch and dropped
    scratch: list[Scratch] = field(default_factory=list)
    steps: list = field(default_factory=list)
    #: id of a construction -> its tensor, for the tensors some recorded op reads
    read: dict[int, Tensor] = field(default_factory=dict)
    #: meta tensor id -> allocated tensor (what recorded reads of other tensors follow)
    mapping: dict[int, Tensor] = field(default_factory=dict)


def split(plan: Plan, steps: list) -> Prologue:
    """The prologue of an unseeded run of ``plan`` (its ``steps`` already remapped onto the
    allocated tensors), and the steps that remain."""
    last: dict[int, object] = {}  # meta tensor id -> its last planned write's op
    defaults: list[Write] = []
    for ev in plan.events:
        if isinstance(ev, Write):
            last[id(ev.tensor)] = ev.op
            if isinstance(ev.op, DefaultFill) and ev.op.construction is not None:
                defaults.append(ev)
    if not defaults:
        return Prologue(steps=steps)
    exact = any(ev.op.construction.match_eager for ev in defaults)
    user: set[int] = set()  # tensors user code may write (or a plan it makes, nested)
    if not exact:
        for step in steps:
            if isinstance(step, UserCall):
                user.update(id(t) for t in subtree_tensors(step.module))
    final = {id(ev.op) for ev in defaults if last[id(ev.tensor)] is ev.op}
    first: list[Write] = []
    rest: list = []
    for step in steps:
        if isinstance(step, UserCall):
            rest.append(step)
            continue
        keep = []
        for w in step:
            if id(w.op) in final and id(w.tensor) not in user and w.tensor.device.type != "meta":
                first.append(w)
            else:
                keep.append(w)
        if keep:
            rest.append(tuple(keep))
    # a construction another one reads (``b.copy_(a)``) is replayed even when a rule covers
    # its tensor: the reader needs its value
    read = {id(construction_of(o)): o for c in [ev.op.construction for ev in defaults]
            + [c for ev in defaults for c in ev.op.orphans] for o in c.reads()}
    scratch = []
    seen: set[int] = set()
    for ev in defaults:
        op = ev.op
        for c in op.orphans:
            if id(c) not in seen:
                seen.add(id(c))
                scratch.append((c, c.shape, c.dtype, _device(op, ev.tensor)))
        covered = id(op) not in final
        if covered and (exact or id(op.construction) in read) and \
                id(op.construction) not in seen:
            seen.add(id(op.construction))
            target = op.mapping.get(id(ev.tensor), ev.tensor)
            scratch.append((op.construction, tuple(ev.tensor.shape), target.dtype,
                            _device(op, ev.tensor)))
    return Prologue(tuple(first), scratch, rest, read, defaults[0].op.mapping)


def _device(op: DefaultFill, meta: Tensor) -> torch.device:
    target = op.mapping.get(id(meta))
    return target.device if target is not None else torch.device("cpu")


def scratch_items(prologue: Prologue) -> tuple[list[tuple[Construction, Tensor]], dict[int, Tensor]]:
    """(construction, scratch tensor) pairs to replay, and the mapping to replay with.

    Scratch tensors share one buffer per (device, dtype): only the random numbers they
    spend matter. A tensor another recorded op reads gets its own memory, and reads of
    it go there (in eager construction they read its value at that point).
    """
    read = prologue.read
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for c, shape, dtype, device in prologue.scratch:
        if id(c) not in read:
            key = (device, dtype)
            sizes[key] = max(sizes.get(key, 0), math.prod(shape))
    buffers = {key: torch.empty(n, dtype=key[1], device=key[0]) for key, n in sizes.items()}
    local = dict(prologue.mapping)
    items = []
    for c, shape, dtype, device in prologue.scratch:
        if id(c) in read:
            t = torch.empty(shape, dtype=dtype, device=device)
            local[id(read[id(c)])] = t
        else:
            t = buffers[(device, dtype)][:math.prod(shape)].view(shape)
        items.append((c, t))
    return items, local
