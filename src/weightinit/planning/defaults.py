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
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..capture.deferred import Construction, construction_of
from ..maths import Elementwise, calculate_gain, check_choice, variance_scaling_dist
from ..maths.fans import FAN_MODES
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


def needs_materialization(root: nn.Module) -> bool:
    return any(t.device.type == "meta" for t in list(root.parameters()) + list(root.buffers()))


def _kaiming(shape: tuple[int, ...], distribution: str, a: float = 0.0, mode: str = "fan_in",
             nonlinearity: str = "leaky_relu") -> Elementwise:
    check_choice(mode, FAN_MODES, "mode")
    gain = calculate_gain(nonlinearity, a)
    return variance_scaling_dist(shape, gain * gain, mode, distribution)


def _xavier(shape: tuple[int, ...], distribution: str, gain: float = 1.0) -> Elementwise:
    return variance_scaling_dist(shape, gain * gain, "fan_avg", distribution)


_TENSOR_METHODS: dict[str, Callable[..., Elementwise]] = {
    "normal_": lambda shape, mean=0.0, std=1.0: Elementwise("normal", (mean, std)),
    "uniform_": lambda shape, a=0.0, b=1.0, **kw: Elementwise(
        "uniform", (kw.get("from", a), kw.get("to", b))),
    "fill_": lambda shape, value: Elementwise("constant", (value,)),
    "zero_": lambda shape: Elementwise("constant", (0.0,)),
}

_INIT_FUNCTIONS: dict[str, Callable[..., Elementwise]] = {
    "normal_": lambda shape, mean=0.0, std=1.0: Elementwise("normal", (mean, std)),
    "uniform_": lambda shape, a=0.0, b=1.0: Elementwise("uniform", (a, b)),
    "trunc_normal_": lambda shape, mean=0.0, std=1.0, a=-2.0, b=2.0: Elementwise(
        "trunc_normal", (mean, std, a, b)),
    "constant_": lambda shape, val: Elementwise("constant", (val,)),
    "ones_": lambda shape: Elementwise("constant", (1.0,)),
    "zeros_": lambda shape: Elementwise("constant", (0.0,)),
    # torch's defaults for these differ from the rules' (fan_in, leaky_relu)
    "kaiming_uniform_": lambda shape, *a, **kw: _kaiming(shape, "uniform", *a, **kw),
    "kaiming_normal_": lambda shape, *a, **kw: _kaiming(shape, "normal", *a, **kw),
    "xavier_uniform_": lambda shape, *a, **kw: _xavier(shape, "uniform", *a, **kw),
    "xavier_normal_": lambda shape, *a, **kw: _xavier(shape, "normal", *a, **kw),
}


def construction_elementwise(construction: Construction, shape: tuple[int, ...]
                             ) -> Elementwise | None:
    """One recorded whole-tensor fill from ``torch.nn.init`` (or ``normal_``, ``fill_`` ...)
    with plain arguments, as an :class:`~weightinit.maths.Elementwise`; else ``None``.

    A computed value whose elements are all equal (``Parameter(torch.ones(d))``) is
    that constant (:func:`uniform_value`). Multi-step inits (``Embedding``'s padding
    row), writes through views, other computed values and explicit generators are
    replayed as recorded.
    """
    if len(construction.ops) != 1:
        return None
    fn, args, kwargs, chain = construction.ops[0]
    if fn is Tensor.copy_ and not chain and not kwargs and len(args) == 1:
        return uniform_value(args[0])
    if chain or "generator" in kwargs or any(
            not isinstance(a, (int, float, str)) or isinstance(a, bool)
            for a in (*args, *kwargs.values())):
        return None
    name = getattr(fn, "__name__", "")
    module = getattr(fn, "__module__", None) or ""
    # transformers' initialization functions are torch's, skipped for tensors it loaded
    if module in ("torch.nn.init", "transformers.initialization") or module.startswith(
            "weightinit.maths"):
        table = _INIT_FUNCTIONS
    elif getattr(Tensor, name, None) is fn:
        table = _TENSOR_METHODS
    else:
        return None
    make = table.get(name)
    if make is None:
        return None
    try:
        dist = make(tuple(shape), *args, **kwargs)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if any(not math.isfinite(float(v)) for v in dist.args):
        return None
    return dist


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def uniform_value(value: Any) -> Elementwise | None:
    """A recorded value (``Parameter(torch.ones(d))``) whose elements are all the same finite
    float, bit for bit, as a constant fill (no host-to-device copy on a GPU); else ``None``.

    Only floating-point values on the CPU are read (one pass); a constant's float is
    exact, and filling a tensor of any floating dtype with it rounds as copying would.
    """
    if not isinstance(value, Tensor) or value.device.type != "cpu" or \
            not value.is_floating_point() or value.is_complex() or not value.numel():
        return None
    flat = value.detach().reshape(-1)
    first = float(flat[0])
    if not math.isfinite(first):
        return None
    bits = flat.view(_BITS[flat.element_size()])
    if not bool((bits == bits[0]).all()):
        return None  # (0.0 and -0.0 differ here, as their copies would)
    return Elementwise("constant", (first,))


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
            dist = construction_elementwise(construction, tuple(t.shape))
            events.append(Write(t, DefaultFill(module, root_name, construction, mapping, dist,
                                               model_init)))
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
    return tuple(c for c in others if not c.alive)


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
