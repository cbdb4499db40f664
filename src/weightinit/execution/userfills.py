"""User code's draws from torch's global generator, and its constant fills, written when the
run needs them.

``normal_``/``uniform_`` over a whole CPU tensor of the model (:data:`DEFER_MIN` elements
or more), from the global generator
(``kaiming_normal_`` in MMCV's ``ConvModule.init_weights``, ``trunc_normal_``'s first
step, a head's ``normal_(std=0.01)``), is drawn in tiles under a key that is one draw of
the generator (:func:`~.seeding.fill_unseeded`): the key, not the moment of drawing,
decides the values. So the watch draws the key when the op runs (the generator advances
exactly as before) and keeps the tiles pending as a :class:`UserDraw`, like a rule's
write (:mod:`.pending`): user code that reads the tensor, or writes part of it, has it
drawn first; user code that overwrites it whole cancels it; otherwise it is drawn at the
end of the run. Elementwise ops user code then runs on it with numbers only (the rest of
MMCV's ``trunc_normal_``: ``erfinv_``, ``mul_``, ``add_``, ``clamp_``) join it, to be done
on the drawn values, in order. The tensor's record entry is the ops', made when they ran.

A constant fill over a whole floating-point tensor of the model (``fill_(number)``,
``zero_()``: ``constant_init``, ``nn.init.zeros_``, of any size) waits the same way, as a
:class:`UserDraw` of a constant (no key: it draws nothing).

Drawn at the end, after the last user call, it goes into the tensor's own memory with
nothing kept (:mod:`.inplace`), where drawing it at once, while the run could still be
undone, meant a fresh storage for the tensor: new memory, which costs its first touch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..maths import Elementwise
from ..planning import OpKind
from .parallel import draw_all, parallel_target
from .seeding import unseeded_key
from .tiles import RegionFill, uncounted_alias

#: a user draw over at least this many elements is kept pending when the tensor alone holds
#: its storage (drawn in tiles then, under its key); one that can not wait is drawn at once
#: in tiles from :data:`~.seeding.UNSEEDED_MIN` elements up, by torch's own op below that
DEFER_MIN = 1 << 12

#: in-place elementwise ops that may join a pending draw, when their other arguments are
#: numbers
_CHAINABLE = frozenset(
    getattr(getattr(torch.ops.aten, name), overload)
    for name, overloads in (("erfinv_", ("default",)), ("mul_", ("Tensor", "Scalar")),
                            ("add_", ("Tensor", "Scalar")), ("sub_", ("Tensor", "Scalar")),
                            ("div_", ("Tensor", "Scalar")), ("clamp_", ("default",)),
                            ("clamp_min_", ("default",)), ("clamp_max_", ("default",)))
    for overload in overloads)


_DRAWS = {torch.ops.aten.normal_.default: ("normal", (0.0, 1.0)),
          torch.ops.aten.uniform_.default: ("uniform", (0.0, 1.0))}
_CONSTANTS = frozenset({torch.ops.aten.fill_.Scalar, torch.ops.aten.zero_.default})
_PLAIN = (Tensor, torch.nn.Parameter)  # (no subclass: its ops need its own dispatch)
#: the ops :func:`user_fill` may keep pending
FILLS = frozenset(_DRAWS) | _CONSTANTS


def user_fill(func: Any, args: tuple, kwargs: dict) -> Elementwise | None:
    """What user code's op ``func(*args, **kwargs)`` (one of :data:`FILLS`) fills its tensor
    with, when the run may write it later: ``normal_``/``uniform_`` from the global
    generator on a CPU tensor of at least :data:`DEFER_MIN` elements (drawn in tiles then,
    :func:`~.seeding.fill_unseeded`: the distribution is the same, ``torch.manual_seed``
    still decides the values), ``fill_``/``zero_`` of a floating-point tensor with a number
    its dtype holds. None: not such a call (torch's own op runs, with its errors)."""
    t = args[0]
    if func in _CONSTANTS:
        value = args[1] if len(args) > 1 else kwargs.get("value", 0)
        if type(t) not in _PLAIN or not t.is_floating_point() or type(value) not in (
                int, float, bool) or (math.isfinite(value)
                                      and abs(value) > torch.finfo(t.dtype).max):
            return None
        return _constant(value).dist
    if kwargs.get("generator") is not None or t.numel() < DEFER_MIN \
            or not parallel_target(t) or not t.is_contiguous() or not t.is_floating_point():
        return None
    kind, defaults = _DRAWS[func]
    given = list(args[1:3]) + [None] * (3 - len(args))
    names = ("mean", "std") if kind == "normal" else ("from", "to")
    a, b = (kwargs.get(n, given[i] if given[i] is not None else defaults[i])
            for i, n in enumerate(names))
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)) or (
            kind == "normal" and b < 0) or (kind == "uniform" and not a <= b):
        return None  # let torch raise its own error
    return Elementwise(kind, (float(a), float(b)))


#: (type, value, sign) of a number user code filled with -> its pending write (the same
#: for every tensor: nothing in it is the tensor's), made once (up to a few hundred numbers)
_CONSTANT_FILLS: dict[tuple[type, Any, float], UserDraw] = {}


def _constant(value: float) -> UserDraw:
    key = (type(value), value, math.copysign(1.0, value))  # (-0.0 is not 0.0 here)
    op = _CONSTANT_FILLS.get(key)
    if op is None:
        op = UserDraw(Elementwise("constant", (value,)), 0)
        if value == value and len(_CONSTANT_FILLS) < 256:  # (nan: never equal, never found)
            _CONSTANT_FILLS[key] = op
    return op


def pending_fill(dist: Elementwise) -> UserDraw:
    """The pending write of user code's whole fill of ``dist`` (a draw's key drawn now)."""
    if dist.random:
        return UserDraw(dist, unseeded_key(dist))
    return _constant(dist.args[0])


def chainable(func: Any, args: tuple, kwargs: dict) -> bool:
    """``func(args[0], ...)`` is one of those ops with finite numbers (or ``None`` bounds)
    for all its other arguments (and, for ``clamp_``, at least one bound)."""
    if func not in _CHAINABLE:
        return False
    rest = (*args[1:], *kwargs.values())
    if not all(v is None or (type(v) in (int, float) and math.isfinite(v)) for v in rest):
        return False
    return func.overloadpacket.__name__ != "clamp_" or any(v is not None for v in rest)


@dataclass(frozen=True)
class UserDraw:
    """The tiles of user code's draw of ``dist`` under ``key`` over a whole tensor (or its
    constant: ``dist`` of kind ``constant``, no key), then the elementwise ops of ``chain``
    (``(op, its other arguments, keywords)``) on them."""

    dist: Elementwise
    key: int
    chain: tuple[tuple[Any, tuple, tuple], ...] = ()
    kind: OpKind = OpKind.USER
    group: None = None
    #: it writes its tensor whole and reads nothing (planning.ops.fills_whole): so it is
    #: undone by a storage swap, and written in place after the last user call
    writes_whole: bool = True

    def elementwise(self, shape: tuple[int, ...]) -> Elementwise | None:
        return None  # (not a rule's fill: never batched with them, never seeded by name)

    def then(self, func: Any, args: tuple, kwargs: dict) -> UserDraw:
        return replace(self, chain=(*self.chain, (func, args[1:], tuple(kwargs.items()))))

    def fill(self, tensor: Tensor) -> RegionFill:
        """The tiles, into the memory ``tensor`` has now (the op counted the write)."""
        fill = RegionFill(self.dist, tensor, self.key)
        fill.count_write = False
        return fill

    def finish(self, tensor: Tensor) -> None:
        """The chained ops, on the drawn values (each counted its write when it ran)."""
        if self.chain:
            alias = uncounted_alias(tensor)
            with torch.no_grad():
                for func, rest, kwargs in self.chain:
                    func(alias, *rest, **dict(kwargs))

    def write(self, tensor: Tensor) -> None:
        if self.dist.random:
            draw_all([self.fill(tensor)])
        else:
            with torch.no_grad():  # (``.data``: its own version counter, the op counted)
                tensor.data.fill_(self.dist.args[0])
        self.finish(tensor)


def is_user_draw(op: Any) -> bool:
    return type(op) is UserDraw


__all__ = ["DEFER_MIN", "FILLS", "UserDraw", "chainable", "is_user_draw", "pending_fill",
           "user_fill"]
