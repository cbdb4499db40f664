"""What a recorded constructor init means as one per-element distribution.

A deferred tensor's construction (:mod:`weightinit.capture.deferred`) is a
list of recorded ops. When it is one whole-tensor fill with plain arguments
(``torch.nn.init.kaiming_uniform_(w, a=sqrt(5))``, ``bias.zero_()``) or a
value whose elements are one constant (``Parameter(torch.ones(d))``), it is
an :class:`~weightinit.maths.Elementwise`: seeded runs draw it block by block
and a GPU run fills its constants together, without replaying the ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..capture.construction import Construction
from ..maths import Elementwise, calculate_gain, check_choice, variance_scaling_dist
from ..maths.fans import FAN_MODES


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


#: libraries' init helpers recorded as one write (:mod:`weightinit.capture.deferred`)
_LIBRARY_FUNCTIONS: dict[str, dict[str, Callable[..., Elementwise]]] = {
    "timm.layers.weight_init": {"_trunc_normal_": _INIT_FUNCTIONS["trunc_normal_"]},
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
    return op_elementwise(construction.ops[0], shape)


def last_whole_write(construction: Construction, shape: tuple[int, ...]
                     ) -> tuple[int, Elementwise] | None:
    """``(k, dist)``: the last recorded op that overwrites the tensor whole with a
    per-element distribution (``normal_(std=0.02)`` in a model's own init, after the
    constructor's ``kaiming_uniform_``), when the ops before it read no other deferred
    tensor (``copy_(other)``) — they are then dead: nothing saw their values. ``None`` if there is no such op.

    Order-free (seeded) runs draw op ``k`` alone and replay only the ops after it (a
    padding row zeroed, a rescale); runs that must equal eager construction replay all."""
    for k in range(len(construction.ops) - 1, -1, -1):
        dist = op_elementwise(construction.ops[k], shape)
        if dist is not None:
            dead = construction.ops[:k]
            if any(isinstance(a, Tensor) and a.device.type == "meta"
                   for _, args, kwargs, _ in dead for a in (*args, *kwargs.values())):
                return None  # (a computed value is no read: it is the op's own constant)
            return k, dist
    return None


def op_elementwise(op: tuple, shape: tuple[int, ...]) -> Elementwise | None:
    """One recorded op as a per-element distribution, when it fills the tensor whole with
    plain arguments (a ``generator=None`` is the default generator); else ``None``."""
    fn, args, kwargs, chain = op
    if fn is Tensor.copy_ and not chain and not kwargs and len(args) == 1:
        return uniform_value(args[0])
    if kwargs.get("generator", 0) is None:
        kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
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
    elif module in _LIBRARY_FUNCTIONS:
        table = _LIBRARY_FUNCTIONS[module]
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


def describe_op(op: tuple) -> str:
    """A recorded op as a call, for the record: ``normal_(mean=0.0, std=0.02)``."""
    fn, args, kwargs, chain = op
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()
                                       if not (k == "generator" and v is None)]
    steps = "".join(f".{getattr(f, '__name__', 'op')}" for f, _, _ in chain)
    if fn is Tensor.copy_:
        return f"{steps[1:] + '.' if steps else ''}copy_(value)"
    return f"{steps[1:] + '.' if steps else ''}{getattr(fn, '__name__', 'op')}({', '.join(shown)})"


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
    bits = flat.view(_BITS[flat.element_size()])
    if bits.numel() > 4096 and bits[0].item() != bits[-1].item():
        return None  # (a large table of other values: no pass over it)
    lo, hi = torch.aminmax(bits)
    if lo.item() != hi.item():
        return None  # (0.0 and -0.0 differ here, as their copies would)
    first = float(flat[0])
    return Elementwise("constant", (first,)) if math.isfinite(first) else None


__all__ = ["construction_elementwise", "uniform_value"]
