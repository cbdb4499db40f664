"""The PyTorch default of every deferred (``meta``) tensor, and which tensors have none.

A tensor built under :func:`weightinit.deferred` gets, unless a rule writes
it, its replayed constructor init; a ``meta`` tensor with nothing recorded
gets its module's ``reset_parameters()``. These writes come first in a
plan's events, so scheduling drops them wherever a rule writes the tensor
later. A tensor with no default, no rule and no user code over it would be
left as uninitialized memory: planning raises for it, naming it and the fix.
"""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..capture.construction import Construction, construction_of
from ..rules import reset_method_of
from .layout import is_sharded
from .ops import DefaultFill, model_init_owner
from .plan import Event, UserCall, Write, subtree_tensors

Slots = list[tuple[str, nn.Module, str, str, Tensor]]


def slots_of(root: nn.Module) -> Slots:
    """(full name, module, 'param'|'buffer', attr, tensor) for every slot, aliases included."""
    out = []
    for prefix, m in root.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, p in m._parameters.items():
            if p is not None:
                out.append((dot + name, m, "param", name, p))
        for name, b in m._buffers.items():
            if b is not None:
                out.append((dot + name, m, "buffer", name, b))
    return out


def needs_materialization(root: nn.Module, tensors: list[Tensor] | None = None) -> bool:
    """Some tensor of ``root`` (``tensors``: its parameters and buffers, when known) is on
    ``meta``."""
    if tensors is None:
        tensors = list(root.parameters()) + list(root.buffers())
    return any(t.device.type == "meta" for t in tensors)


def default_events(root: nn.Module, mapping: dict[int, Tensor], slots: Slots
                   ) -> tuple[list[Write], list[tuple[str, str]]]:
    """Default writes for meta tensors, and the (name, reason) of tensors that have none."""
    events: list[Write] = []
    undefined: list[tuple[str, str]] = []
    seen: set[int] = set()
    root_name = type(root).__name__
    model_init = model_init_owner(root)
    for name, module, _, attr, t in slots:
        if t.device.type != "meta" or id(t) in seen:
            continue
        seen.add(id(t))
        construction = _construction(module, attr, t)
        if construction is not None and construction.defined:
            events.append(Write(t, DefaultFill(module, root_name, construction, mapping,
                                               tuple(t.shape), model_init)))
        elif construction is None and reset_method_of(module) is not None:
            events.append(Write(t, DefaultFill(module, root_name, None, mapping)))
        elif construction is not None and construction.broken:
            undefined.append((name, construction.broken))
        elif construction is not None:
            undefined.append((name, "its constructor creates it with torch.empty and never "
                                    "writes it"))
        else:
            undefined.append((name, f"it is on the meta device and {type(module).__name__} has "
                                    "no reset_parameters()"))
    # Replay in construction order: the random generator is then drawn in eager order.
    events.sort(key=lambda ev: ev.op.construction.first if ev.op.construction else -1)
    orphans = _orphans(root, slots)
    if orphans and events and events[0].op.construction is not None:
        first = events[0]
        events[0] = Write(first.tensor, dataclasses.replace(first.op, orphans=orphans))
    return events, undefined


def _orphans(root: nn.Module, slots: Slots) -> tuple[Construction, ...]:
    """The constructions of the tensors built in the model's ``deferred()``
    block that no longer exist: replaced after being initialized (tied embeddings), in
    children built and then replaced, dropped or never attached. Eager construction drew
    their inits too."""
    live = [c for c in (_construction(m, attr, t) for _, m, _, attr, t in slots)
            if c is not None]
    if not live:
        return ()
    ids = {id(c) for c in live}
    blocks = {id(c.block): c.block for c in live if c.block is not None}
    # a tensor still alive elsewhere belongs to another model (or to someone's variable);
    # one of a model built earlier in the block and dropped was drawn before ours eagerly
    others = [c for block in blocks.values() for c in block
              if id(c) not in ids and c.defined and not c.materialized]
    if any(c.alive for c in others):
        gc.collect()  # tensors dropped in reference cycles are not gone yet
    # a temporary the model's values were computed from (``Parameter(t * 3)``) is kept
    # alive by the recorded computation only: it is the model's, drawn where it was
    read = {id(construction_of(o)) for c in live for o in c.reads()}
    return tuple(c for c in others if not c.alive or id(c) in read)


def _construction(module: nn.Module, attr: str, t: Tensor) -> Construction | None:
    construction = construction_of(t)
    if construction is None and is_sharded(t):
        # Sharding (fully_shard, distribute_module) replaced the parameter object;
        # deferred() also noted the construction on the module under its name.
        construction = module.__dict__.get("_wi_constructions", {}).get(attr)
    return construction


def split_undefined(undefined: list[tuple[str, str]], events: list[Event], slots: Slots
                    ) -> tuple[list[tuple[str, str]], list[str]]:
    """(tensors nothing gives a value, tensors only user code over them can write)."""
    if not undefined:
        return [], []
    written = {id(ev.tensor) for ev in events if isinstance(ev, Write)}
    user = {id(t) for ev in events if isinstance(ev, UserCall) for t in subtree_tensors(ev.module)}
    by_name: dict[str, Any] = {n: t for n, _, _, _, t in slots}
    bad, left_to_user = [], []
    for name, reason in undefined:
        t = by_name[name]
        if id(t) in written:
            continue
        if id(t) in user:
            left_to_user.append(name)
        else:
            bad.append((name, reason))
    return bad, left_to_user
