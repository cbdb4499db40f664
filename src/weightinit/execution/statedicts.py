"""User code's ``load_state_dict``: a module's tensors taken at once, not op by op.

``nn.Module.load_state_dict`` (and MMCV's ``load_state_dict``, and most research code's)
copies each entry of a state dict into a parameter or buffer with ``copy_``, one module at a
time (``Module._load_from_state_dict``). Watched op by op (:mod:`.pending`), each copy pays a
pass through the dispatch mode. So while a run's user code runs, :func:`user_loads` puts a
stand-in for ``nn.Module._load_from_state_dict`` (and wraps ``torch.load``: :mod:`.records`).
For a module whose load is torch's own for its local tensors — no load pre-hooks, no
``set_extra_state`` of its class, neither ``assign=True`` nor swapped tensors — from a plain
``dict`` whose every entry for the module is a plain tensor of the same shape, dtype and
device as the parameter or buffer it goes into, that alone holds its storage, read from memory
that is not the model's, the stand-in does before the load what the watch does before each
copy (the pending write cancelled, what undoes the copy kept, a source's storage taken when
nothing else holds it, the record entry, named as the watch names it) and then runs torch's
own with the watch stepped off: no copy can fail or do anything else there. Any other module:
torch's own, watched op by op. The stand-in is put back when the last run using it ends
(unless someone replaced it since: theirs stays); a load in another thread, or outside user
code, is torch's own.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .attribution import attribute
from .patches import SharedPatch
from .records import loads_seen
from .watch import storage_ptr

#: the watch of the run whose user code runs in this context, and its thread
_WATCH: contextvars.ContextVar[tuple[Any, int] | None] = \
    contextvars.ContextVar("weightinit_state_dict_loads", default=None)
#: torch's own, kept for a stand-in called after it was put back (a reference kept)
_TORCHS = nn.Module.__dict__["_load_from_state_dict"]
_DICTS = (dict, OrderedDict)
_PLAIN = (Tensor, nn.Parameter)
_COPY = torch.ops.aten.copy_.default


def _load_from_state_dict(self: nn.Module, state_dict: Any, prefix: str, local_metadata: Any,
                          strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                          error_msgs: list[str]) -> None:
    """``nn.Module._load_from_state_dict`` while a run's user code runs (see the module).
    Named and called as torch's own, so a write it makes is named as torch's would be."""
    original = STATE_DICT_LOAD.original or _TORCHS
    watch = user_watch()
    if watch is not None:
        with watch.lock:
            copies = _copies(self, state_dict, prefix, local_metadata, watch.pending.index())
            if copies:
                watch.active.append(False)  # the library's from here
                left = watch.leave()
                try:
                    _take(watch.pending, copies, sys._getframe(0))
                    return original(self, state_dict, prefix, local_metadata, strict,
                                    missing_keys, unexpected_keys, error_msgs)
                finally:
                    if left:
                        watch.come_back()
                    watch.active.pop()
    return original(self, state_dict, prefix, local_metadata, strict, missing_keys,
                    unexpected_keys, error_msgs)


def user_watch() -> Any:
    """The watch of the run whose user code runs now, in this thread (None: none does)."""
    seen = _WATCH.get()
    watch = seen[0] if seen is not None and seen[1] == threading.get_ident() else None
    return watch if watch is not None and watch.active and watch.active[-1] else None


def _swaps() -> bool:
    """torch swaps tensors on load instead of copying (``torch.__future__``)."""
    swapping = getattr(torch.__future__, "get_swap_module_params_on_conversion", None)
    return bool(swapping()) if swapping is not None else False


def _copies(module: nn.Module, state_dict: Any, prefix: str, local_metadata: Any,
            index: dict[int, list[Tensor]]) -> list[tuple[Tensor, Tensor]] | None:
    """(tensor, source) for each copy torch's own load of ``module`` will make, when each is
    a plain whole copy that can not fail, into a tensor alone on its storage, from memory
    that is not the model's, and nothing else of the load runs code; None (or none): not
    so, torch's own runs, watched op by op."""
    if type(state_dict) not in _DICTS:
        return None
    out = []
    skip = module._non_persistent_buffers_set
    for slots, buffers in ((module._parameters, False), (module._buffers, True)):
        for name, t in slots.items():
            if t is None or (buffers and name in skip):
                continue
            source = state_dict.get(prefix + name, _PLAIN)
            if source is _PLAIN:
                continue
            if type(source) not in _PLAIN or type(t) not in _PLAIN or t.is_meta \
                    or source.is_meta or source.shape != t.shape or source.dtype != t.dtype \
                    or source.device != t.device:
                return None
            owners = index.get(storage_ptr(t))
            if not owners or len(owners) != 1 or owners[0] is not t \
                    or storage_ptr(source) in index:
                return None
            out.append((t, source))
    if not out or module._load_state_dict_pre_hooks or not isinstance(local_metadata, dict) \
            or getattr(type(module), "set_extra_state", nn.Module.set_extra_state) \
            is not nn.Module.set_extra_state \
            or local_metadata.get("assign_to_params_buffers", False) or _swaps():
        return None
    return out


def _take(pending: Any, copies: list[tuple[Tensor, Tensor]], frame: Any) -> None:
    """What the watch does before each of ``copies`` (``frame``: the stand-in's, which names
    them as torch's own would be named)."""
    text = attribute(_COPY, (), frame.f_back, frame)
    for t, source in copies:
        ptr = storage_ptr(t)
        if ptr in pending.adopted:  # a storage a copy_ source gave: it takes its own copy
            pending.release_source(ptr)
        pending.cancel(t)
        if pending.before_overwrite(t, source) is not None:
            pending.moved_by_run(t, ptr)
        pending.observed(t, text)


@contextlib.contextmanager
def state_dict_loads(watch: Any) -> Iterator[None]:
    """In the block (this thread and context), user code's state-dict loads take a module
    at once when they can (see the module), seen by ``watch``."""
    with STATE_DICT_LOAD.held():
        token = _WATCH.set((watch, threading.get_ident()))
        try:
            yield
        finally:
            _WATCH.reset(token)


#: ``nn.Module._load_from_state_dict``, the stand-in while held
STATE_DICT_LOAD = SharedPatch(nn.Module, "_load_from_state_dict",
                              lambda original: _load_from_state_dict)


@contextlib.contextmanager
def user_loads(sink: Callable[[list[Tensor]], None], watch: Any) -> Iterator[None]:
    """While user code runs under ``watch``: its ``torch.load`` calls report their tensors to
    ``sink`` (:func:`.records.loads_seen`), its state-dict loads take a module at once."""
    with loads_seen(sink, partial(watch.state, False, True)), \
            state_dict_loads(watch):
        yield


__all__ = ["STATE_DICT_LOAD", "state_dict_loads", "user_loads", "user_watch"]
