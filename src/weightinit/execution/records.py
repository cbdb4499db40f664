"""Checkpoints user code reads with ``torch.load`` while a run watches it.

User code that loads a checkpoint itself (MMSegmentation's ViT and Swin, SETR, many
research backbones) then copies each entry into a parameter with ``load_state_dict``.
The run keeps the parameter's old storage to undo the call, so the copy would need new
memory; instead, a whole ``copy_`` from a tensor torch allocated, that nothing else
views, hands that tensor's storage to the parameter (:meth:`.Transaction.before_overwrite`).

``torch.load`` reads each record of a checkpoint into memory torch's CPU allocator gives,
but marks those storages not resizable, as it marks memory it was handed (a NumPy array,
a buffer), which can not be told apart from Python. So while a run's user code runs,
:func:`loads_seen` wraps ``torch.load``: the CPU tensors a load returns (not ``mmap=True``,
whose memory is the file's) are reported to the run, which then trusts exactly those
tensors' memory while they live. The wrapper is put back when the last run using it ends
(unless someone replaced ``torch.load`` since: theirs stays); a load in another thread,
or outside user code, reports nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

_SINK: contextvars.ContextVar[Callable[[list[Tensor]], None] | None] = contextvars.ContextVar(
    "weightinit_loads", default=None)
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"users": 0, "original": None, "wrapper": None}
#: containers walked for tensors (a checkpoint's dicts and lists), at most this many objects
_WALK_LIMIT = 1 << 20


def loaded_tensors(obj: Any) -> list[Tensor]:
    """The plain CPU tensors in ``obj`` (dicts, lists, tuples, nested; iteratively)."""
    out: list[Tensor] = []
    seen: set[int] = set()
    work = [obj]
    while work and len(seen) < _WALK_LIMIT:
        item = work.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if type(item) is Tensor:
            if item.device.type == "cpu":
                out.append(item)
        elif isinstance(item, dict):
            work.extend(item.values())
        elif isinstance(item, (list, tuple)):
            work.extend(item)
    return out


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        sink = _SINK.get()
        if sink is not None and not kwargs.get("mmap"):
            sink(loaded_tensors(out))
        return out

    return load


@contextlib.contextmanager
def loads_seen(sink: Callable[[list[Tensor]], None]) -> Iterator[None]:
    """In the block (this thread and context), each ``torch.load`` reports its CPU tensors
    to ``sink``."""
    with _LOCK:
        if _STATE["users"] == 0:
            _STATE["original"] = torch.load
            _STATE["wrapper"] = _wrap(torch.load)
            torch.load = _STATE["wrapper"]
        _STATE["users"] += 1
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)
        with _LOCK:
            _STATE["users"] -= 1
            if _STATE["users"] == 0:
                if torch.load is _STATE["wrapper"]:
                    torch.load = _STATE["original"]
                _STATE["original"] = _STATE["wrapper"] = None


__all__ = ["loaded_tensors", "loads_seen"]
