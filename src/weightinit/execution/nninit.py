"""torch's one-op ``nn.init`` helpers, taken in one step while a run watches user code.

MMCV's ``constant_init`` and ``normal_init``, MMEngine's, ``LayerNorm.reset_parameters``
and most research code call ``nn.init.constant_``, ``zeros_``, ``ones_``, ``normal_`` or
``uniform_`` on a whole tensor: one ATen op each (``fill_``, ``zero_``, ``normal_``,
``uniform_``), which the watch keeps pending (:mod:`.userfills`) after a pass through the
dispatch mode and torch's ``no_grad`` block. While a run with user code runs (from its
start to its end: :func:`patches_held`), these helpers are stand-ins, named, called and
defaulted as torch's (so a write is named as torch's helper would be), that hand the same op
to :func:`.userchains.take_draw_chain`: the same pending write, record entry and version
count, in one step. Anything the watch would not keep pending (a small draw, a tensor that
shares its storage, a generator given, a tensor subclass or a torch function mode, a seeded
run, another thread, no run) is torch's own helper, watched op by op.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.init
from torch.overrides import has_torch_function_variadic

from .patches import SharedPatch
from .records import TORCH_LOAD
from .statedicts import STATE_DICT_LOAD
from .userchains import take_draw_chain

_ATEN = torch.ops.aten
_NAMES = ("constant_", "zeros_", "ones_", "normal_", "uniform_")
#: torch's own, kept for a stand-in called after it was put back
_TORCHS = {name: vars(torch.nn.init)[name] for name in _NAMES}


def _torchs(name: str) -> Any:
    return NN_INIT[name].original or _TORCHS[name]


def _taken(op: Any, args: tuple, frame: Any) -> bool:
    """``op(*args)`` on ``args[0]`` kept pending by the run watching this thread (``frame``:
    the stand-in's, the write is named from it and its callers)."""
    return not has_torch_function_variadic(args[0]) \
        and take_draw_chain((op, args, {}), [], frame)


def constant_(tensor: Any, val: float) -> Any:
    """``torch.nn.init.constant_`` while a run watches user code (see the module)."""
    if _taken(_ATEN.fill_.Scalar, (tensor, val), sys._getframe()):
        return tensor
    return _torchs("constant_")(tensor, val)


def zeros_(tensor: Any) -> Any:
    """``torch.nn.init.zeros_`` while a run watches user code (see the module)."""
    if _taken(_ATEN.zero_.default, (tensor,), sys._getframe()):
        return tensor
    return _torchs("zeros_")(tensor)


def ones_(tensor: Any) -> Any:
    """``torch.nn.init.ones_`` while a run watches user code (see the module)."""
    if _taken(_ATEN.fill_.Scalar, (tensor, 1.0), sys._getframe()):
        return tensor
    return _torchs("ones_")(tensor)


def normal_(tensor: Any, mean: float = 0.0, std: float = 1.0, generator: Any = None) -> Any:
    """``torch.nn.init.normal_`` while a run watches user code (see the module)."""
    if generator is None and _taken(_ATEN.normal_.default, (tensor, mean, std),
                                        sys._getframe()):
        return tensor
    return _torchs("normal_")(tensor, mean, std, generator)


def uniform_(tensor: Any, a: float = 0.0, b: float = 1.0, generator: Any = None) -> Any:
    """``torch.nn.init.uniform_`` while a run watches user code (see the module)."""
    if generator is None and _taken(_ATEN.uniform_.default, (tensor, a, b),
                                        sys._getframe()):
        return tensor
    return _torchs("uniform_")(tensor, a, b, generator)


_STAND_INS = {"constant_": constant_, "zeros_": zeros_, "ones_": ones_, "normal_": normal_,
              "uniform_": uniform_}
for _name, _f in _STAND_INS.items():  # (what it stands for: its defaults name its writes)
    _f.__wrapped__ = _TORCHS[_name]  # type: ignore[attr-defined]
#: ``torch.nn.init``'s helpers, the stand-ins while held
NN_INIT = {name: SharedPatch(torch.nn.init, name, lambda original, f=f: f)
           for name, f in _STAND_INS.items()}


@contextlib.contextmanager
def patches_held(needed: bool) -> Iterator[None]:
    """A run with user code (``needed``) holds its stand-ins (``torch.load``, state-dict
    loads, ``nn.init``'s one-op helpers) from its start to its end: its user calls then
    only count holders (see :mod:`.patches`)."""
    if not needed:
        yield
        return
    with contextlib.ExitStack() as stack:
        for patch in (TORCH_LOAD, STATE_DICT_LOAD, *NN_INIT.values()):
            stack.enter_context(patch.held())
        yield


__all__ = ["NN_INIT", "patches_held"]
