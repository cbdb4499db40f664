"""A library helper that is one draw and elementwise ops on it, taken in one step.

MMCV's and MMEngine's ``trunc_normal_`` is five ATen ops on its tensor: a ``uniform_`` draw, then
``erfinv_``, ``mul_``, ``add_`` and ``clamp_`` with numbers. Watched op by op
(:mod:`.pending`), the draw is kept pending and the other four join it, each op paying
a pass through the dispatch mode. A stand-in for such a helper, named and called as the
library's (so its writes are named as the library's would be), hands the same ops to
:func:`take_draw_chain`, which keeps the same pending draw, chain and record entry in
one step and counts the same writes in the tensor's version. Anything the watch would
not keep pending that way (a small tensor, one that shares its storage, a seeded run,
another thread, no run) is the helper's own, watched op by op.

Most calls truncate far out in the tails (``std=0.02`` between -2 and 2: a hundred
standard deviations), where a truncated normal is a normal draw that is checked and almost
never redrawn (:func:`~weightinit.maths.fills.trunc_normal_`'s rejection method: one draw
and one read, where the five ops make five passes). There the stand-in keeps that draw
pending instead of the five ops: the same distribution, the same key drawn from torch's
generator, the same record entry and version count; other values than the five ops would
give from that key (both are one random draw under ``torch.manual_seed``).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch.autograd.graph import increment_version

from ..maths import Elementwise
from .attribution import attribute
from .statedicts import user_watch
from .userfills import chainable, user_fill

#: an op and its arguments (the tensor first), as the watch sees it
Op = tuple[Any, tuple, dict]


def take_draw_chain(draw: Op, then: list[Op], frame: Any,
                    instead: Elementwise | None = None) -> bool:
    """While a run watches this thread's user code: ``draw`` (a whole ``normal_`` or
    ``uniform_``), then the elementwise ops ``then`` on its tensor, kept pending as the
    watch would keep them op by op; True: done (nothing written yet, as there). False:
    nothing done (the caller runs the ops). ``frame``: the stand-in's own, which names the
    write when nothing outside it does. ``instead``: the distribution the ops give, kept
    pending as one draw in their place (see the module)."""
    watch = user_watch()
    if watch is None or not watch.pieces:
        return False
    func, args, kwargs = draw
    dist = user_fill(func, args, kwargs)
    tensor = args[0]
    if dist is None or not all(op[1][0] is tensor and chainable(*op) for op in then):
        return False
    with watch.lock:
        pending = watch.pending
        text = attribute(func, args, frame.f_back, frame)
        if not pending.defer_fill(func, args, dist if instead is None else instead, text):
            return False
        if instead is None:
            for op in then:
                pending.chain(*op, text)
    for _ in range(1 + len(then)):  # (each op counts one write, as torch's do)
        increment_version(tensor)
    return True


_ATEN = torch.ops.aten


def _norm_cdf(x: float) -> float:
    return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0  # (the libraries' arithmetic, to the bit)


#: the expected number of a normal draw's values outside the bounds, over the whole tensor,
#: up to which a truncated normal is drawn by rejection in place of the five ops (a value
#: outside costs a redraw pass, still exact: this keeps that rare)
_REDRAWS_EXPECTED = 0.01


def _direct(tensor: Any, mean: float, std: float, a: float, b: float) -> Elementwise | None:
    """The truncated normal ``trunc_normal_``'s ops give, when drawing it by rejection is
    the cheaper way (see the module); None: the ops are kept."""
    if not (isinstance(tensor, torch.Tensor) and std > 0 and a < mean < b):
        return None
    scale = std * math.sqrt(2.0)
    outside = 0.5 * (math.erfc((mean - a) / scale) + math.erfc((b - mean) / scale))
    if outside * tensor.numel() > _REDRAWS_EXPECTED:
        return None
    return Elementwise("trunc_normal", (float(mean), float(std), float(a), float(b)))


def trunc_normal_stand_in(original: Any) -> Any:
    """For MMCV's and MMEngine's ``_no_grad_trunc_normal_`` (``original``, behind their
    ``trunc_normal_`` and ``trunc_normal_init``): its five ops taken in one step while a
    run watches user code (:func:`take_draw_chain`), the same pending draw, chain, record
    entry and version count as those ops watched one by one (or, far out in the tails, the
    one draw of their distribution: see the module). Anything else (no run, a
    tensor the watch draws at once, the case the library warns about, a zero ``std``) is
    the library's own."""

    def _no_grad_trunc_normal_(tensor: Any, mean: Any, std: Any, a: Any, b: Any) -> Any:
        if all(type(v) in (int, float) for v in (mean, std, a, b)) and std != 0 \
                and not (mean < a - 2 * std or mean > b + 2 * std):
            lower, upper = _norm_cdf((a - mean) / std), _norm_cdf((b - mean) / std)
            if take_draw_chain(
                    (_ATEN.uniform_.default, (tensor, 2 * lower - 1, 2 * upper - 1), {}),
                    [(_ATEN.erfinv_.default, (tensor,), {}),
                     (_ATEN.mul_.Tensor, (tensor, std * math.sqrt(2.0)), {}),
                     (_ATEN.add_.Tensor, (tensor, mean), {}),
                     (_ATEN.clamp_.default, (tensor, a, b), {})],
                    sys._getframe(), _direct(tensor, mean, std, a, b)):
                return tensor
        return original(tensor, mean, std, a, b)

    return _no_grad_trunc_normal_


__all__ = ["take_draw_chain", "trunc_normal_stand_in"]
