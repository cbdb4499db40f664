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
import io
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from ..checkpoint.fastpickle import fast_load
from ..compat import loads_weights_only_by_default
from .patches import SharedPatch

#: (report the tensors of a load, the block a plain load runs in, the thread of both)
_SINK: contextvars.ContextVar[tuple[Callable[[list[Tensor]], None],
                                    Callable[[], AbstractContextManager[Any]], int] | None] = \
    contextvars.ContextVar("weightinit_loads", default=None)
#: what a load may read from without running user code: a path, memory, an open file
_PLAIN_SOURCES = (str, bytes, os.PathLike, io.BytesIO, io.BufferedReader)
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


#: ``torch.load``'s positional parameters (``weights_only``, ``mmap`` and the rest are
#: keyword-only)
_POSITIONAL = ("f", "map_location", "pickle_module")
#: the arguments a load may name and still be read by the checkpoint fast lane
_FAST_ARGUMENTS = frozenset({*_POSITIONAL, "weights_only", "mmap"})


def _given(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """A ``torch.load`` call's arguments by name (None: more positional ones than it takes,
    which torch refuses itself)."""
    if len(args) > len(_POSITIONAL):
        return None
    return {**dict(zip(_POSITIONAL, args)), **kwargs}


def _plain(given: dict[str, Any]) -> bool:
    """This ``torch.load`` runs no user code: it reads a path, bytes or an open file, with
    torch's own unpickler and a device (or a dict of them) for ``map_location``."""
    where, unpickler = given.get("map_location"), given.get("pickle_module")
    return (isinstance(given.get("f"), _PLAIN_SOURCES)
            and (where is None or isinstance(where, (str, torch.device, dict)))
            and (unpickler is None or unpickler is pickle))


def _read(original: Callable[..., Any], given: dict[str, Any], args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> Any:
    """A plain load (:func:`_plain`): read by the checkpoint fast lane (the same result,
    with Python's C unpickler; see :mod:`..checkpoint.fastpickle`) when it reads a path as
    ``weights_only=True`` (asked, or torch's default) with no argument but
    ``map_location`` and ``mmap``, and the lane reads the file; else ``torch.load`` itself."""
    safe = given.get("weights_only")
    if set(given) <= _FAST_ARGUMENTS and given.get("pickle_module") is None \
            and isinstance(given["f"], (str, os.PathLike)) \
            and (safe is True or (safe is None and loads_weights_only_by_default())):
        read, value = fast_load(os.fspath(given["f"]), given.get("map_location"),
                                bool(given.get("mmap")))
        if read:
            return value
    return original(*args, **kwargs)


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        seen = _SINK.get()
        if seen is None:
            return original(*args, **kwargs)
        sink, quiet, thread = seen
        given = _given(args, kwargs)
        if thread == threading.get_ident() and given is not None and _plain(given):
            with quiet():  # the load writes only new tensors: not watched op by op
                out = _read(original, given, args, kwargs)
        else:
            out = original(*args, **kwargs)
        if not kwargs.get("mmap"):
            sink(loaded_tensors(out))
        return out

    return load


@contextlib.contextmanager
def loads_seen(sink: Callable[[list[Tensor]], None],
               quiet: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
               ) -> Iterator[None]:
    """In the block (this thread and context), each ``torch.load`` reports its CPU tensors
    to ``sink``; one that runs no user code (:func:`_plain`) runs in a ``quiet()`` block."""
    with TORCH_LOAD.held():
        token = _SINK.set((sink, quiet, threading.get_ident()))
        try:
            yield
        finally:
            _SINK.reset(token)


#: ``torch.load``, wrapped while held (see the module)
TORCH_LOAD = SharedPatch(torch, "load", _wrap)

__all__ = ["TORCH_LOAD", "loaded_tensors", "loads_seen"]
