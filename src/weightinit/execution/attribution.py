"""Who wrote: the user call behind an op, read from the Python stack.

While user code runs under the watch (:mod:`.pending`), each write it makes is
named by the call made from the innermost user ``init_weights`` frame — through
the user's own helpers in the same file and ``nn.Module.apply`` — with its
scalar arguments that differ from their defaults:
``trunc_normal_(std=0.02) in VisionTransformer.init_weights``. An op made
directly in ``init_weights`` is named by the op: ``fill_(3) in Gate.init_weights``.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import torch.nn as nn

#: frames of these files are machinery (dispatch, decorators), never "the call that wrote"
_OWN_DIR = os.path.dirname(os.path.dirname(__file__))  # the weightinit package
_TORCH_MACHINERY = ("/torch/_dynamo/", "/torch/_compile.py", "/torch/utils/_python_dispatch.py",
                    "/torch/_ops.py", "/torch/_library/", "/torch/autograd/function.py",
                    "/torch/utils/_contextlib.py", "/contextlib.py")
def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _fmt(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:g}"
    return repr(v)


#: id of a code object -> (it, kept alive so the id stays its own; its defaults). By id: a
#: code object's hash reads its whole bytecode, each time
_DEFAULTS: dict[int, tuple[Any, dict[str, Any]]] = {}


def _defaults(frame: Any) -> dict[str, Any]:
    """Default argument values of the function running in ``frame`` (when it can be found)."""
    code = frame.f_code
    hit = _DEFAULTS.get(id(code))
    if hit is None:
        fn = frame.f_globals.get(code.co_name)
        if getattr(fn, "__code__", None) is not code:  # (a stand-in in its place: its original)
            fn = getattr(fn, "__wrapped__", None)
        found = {}
        if getattr(fn, "__code__", None) is code:
            found = {n: p.default for n, p in inspect.signature(fn).parameters.items()
                     if p.default is not inspect.Parameter.empty}
        hit = _DEFAULTS[id(code)] = (code, found)
    return hit[1]


def call_text(frame: Any) -> str:
    """``name(arg=value, ...)`` of the call running in ``frame``: its scalar arguments that
    differ from their defaults (tensors and modules left out)."""
    code = frame.f_code
    names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    local = frame.f_locals
    defaults = _defaults(frame)
    parts = []
    for n in names:
        v = local.get(n)
        if n == "self" or not _scalar(v) or (n in defaults and defaults[n] == v):
            continue
        if v is None and n not in defaults:
            continue
        parts.append(f"{n}={_fmt(v)}")
    return f"{code.co_name}({', '.join(parts)})"


def _op_text(func: Any, args: tuple) -> str:
    scalars = [_fmt(a) for a in args[1:] if _scalar(a) and a is not None]
    return f"{func.overloadpacket.__name__}({', '.join(scalars)})"


#: file name -> whether its frames are machinery
_MACHINERY: dict[str, bool] = {}


def _machinery(filename: str) -> bool:
    hit = _MACHINERY.get(filename)
    if hit is None:
        name = filename.replace("\\", "/")
        hit = _MACHINERY[filename] = filename.startswith(_OWN_DIR) or any(
            m in name for m in _TORCH_MACHINERY)
    return hit


#: the last library call that named a write, and its text: a later op whose stack passes
#: through that same (still running) call is named the same without reading the stack
#: above it. The frame is held, so no other call can take its identity; :func:`forget`
#: lets it go when the user call ends.
_LAST: tuple[Any, str] | None = None


def attribute(func: Any, args: tuple, frame: Any = None, inner: Any = None) -> str | None:
    """What wrote, seen from the Python stack: the call made from the innermost
    user ``init_weights`` frame (through the user's own helpers in the same file
    and ``nn.Module.apply``), as ``call(args) in Class.init_weights``.

    ``frame``: where the walk starts (default: the caller of the watch's hook); ``inner``:
    a frame below it that stands for a library call (a stand-in named as what it replaces).
    """
    global _LAST
    last = _LAST
    held = last[0] if last is not None else None
    if frame is None:
        frame = sys._getframe(2)
    chain: list[Any] = [inner] if inner is not None else []
    while frame is not None:
        if frame is held:  # the held call's text: it is on the stack before anything else
            return last[1]  # type: ignore[index]
        code = frame.f_code
        if code.co_name == "init_weights" and not code.co_filename.startswith(_OWN_DIR):
            owner = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
            if isinstance(owner, nn.Module):
                called = _describing(chain, code.co_filename)
                what = call_text(called) if called is not None else _op_text(func, args)
                text = f"{what} in {type(owner).__name__}.init_weights"
                if called is not None:
                    _LAST = (called, text)
                return text
        machinery = _MACHINERY.get(code.co_filename)
        if not (machinery if machinery is not None else _machinery(code.co_filename)):
            chain.append(frame)
        if id(code) in _STOP:
            return None
        frame = frame.f_back
    return None


def forget() -> None:
    """Let the frame :func:`attribute` keeps go (a user call ended)."""
    global _LAST
    _LAST = None


def _describing(chain: list[Any], user_file: str) -> Any:
    """The frame of the outermost library call below the user's frames (None: the op was
    made by the user's code itself)."""
    for frame in reversed(chain):  # outermost first
        code = frame.f_code
        if code.co_filename == user_file or code is _APPLY:
            continue
        return frame
    return None


_APPLY = nn.Module.apply.__code__
#: ids of the code objects of frames where the search for a user ``init_weights`` stops (the
#: run itself; functions that live as long as the package)
_STOP: set[int] = set()


def stop_at(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``fn`` as where a watched call starts: the stack above it is not user code.
    When it returns, the frame :func:`attribute` keeps is let go."""
    _STOP.add(id(fn.__code__))

    @functools.wraps(fn)
    def watched_call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            forget()

    return watched_call


__all__ = ["attribute", "call_text", "forget", "stop_at"]
