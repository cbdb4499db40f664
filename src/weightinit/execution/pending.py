"""Planned writes that wait, and user code watched op by op.

A planned write is not done when it is planned but kept *pending* until the
end of the run, so user code that runs meanwhile (a user-defined
``init_weights``, an ``__call__`` initializer) decides whether it is needed:

* user code that fully overwrites a tensor whose write is pending (``normal_``,
  ``uniform_``, ``fill_``, ``zero_``, ``copy_`` over the whole tensor, as
  ``nn.init`` and MMEngine's helpers do) cancels that write — the tensor is
  written once, by the user code;
* the first time user code reads a tensor with a pending write (or writes
  part of it), the write is done first, so the user code sees exactly what it
  would have seen had everything been written eagerly;
* each write user code makes becomes the tensor's record entry, named by
  the call that made it: ``trunc_normal_(std=0.02) in VisionTransformer.init_weights``.

:class:`WriteWatch` is a ``TorchDispatchMode``: it sees every ATen op, with
``.data`` aliases and views resolved to their storage, so writes through
``param.data`` are seen as well. Writes no op shows (a ``.data =``
assignment, a replaced ``nn.Parameter``) are found by comparing each
tensor's identity and storage pointer after the call — no value is read.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..compat import TorchDispatchMode, op_written_args, top_dispatch_mode
from ..maths.fills import Elementwise
from ..planning import Write
from .attribution import attribute, stop_at
from .rawreads import raw_reads
from .seeding import UNSEEDED_MIN, unseeded_key
from .userfills import FILLS, UserDraw, chainable, is_user_draw, user_fill
from .watch import TensorState
from .watch import storage_ptr as _storage_ptr

#: ops whose result does not depend on what the written tensor held
_OVERWRITES = frozenset({"normal_", "uniform_", "fill_", "zero_", "copy_", "random_",
                         "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_",
                         "eye", "normal", "zeros", "ones", "full", "rand", "randn"})
_WRITTEN: dict[Any, tuple[tuple[int, ...], tuple[str, ...]]] = {}


def _written_args(func: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Positions and keyword names of the arguments ``func`` writes (from its schema)."""
    hit = _WRITTEN.get(func)
    if hit is None:
        hit = _WRITTEN[func] = op_written_args(func)
    return hit


def _tensors(args: tuple, kwargs: dict) -> Iterator[Tensor]:
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            for x in a:
                if isinstance(x, Tensor):
                    yield x


def _span(t: Tensor) -> tuple[int, int]:
    """Byte range of ``t`` inside its storage."""
    size = t.element_size()
    start = t.storage_offset() * size
    if t.numel() == 0:
        return start, start
    extent = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
    return start, start + extent * size


def _same_region(a: Tensor, t: Tensor) -> bool:
    """``a`` covers exactly the elements of ``t`` (``t`` itself, its ``.data``, a full view)."""
    if a.storage_offset() != t.storage_offset() or a.dtype != t.dtype or a.numel() != t.numel():
        return False
    return (a.shape == t.shape and a.stride() == t.stride()) or (a.is_contiguous()
                                                                  and t.is_contiguous())


class Pending:
    """Planned writes not done yet, and the storages of the model's tensors (to watch)."""

    def __init__(self, root: nn.Module, perform: Callable[[tuple[Write, ...]], None],
                 observed: Callable[[Tensor, str | None], None],
                 before_write: Callable[[Tensor], None],
                 before_overwrite: Callable[[Tensor, Tensor | None], str | None]) -> None:
        self.root = root
        self.writes: dict[int, Write] = {}
        self.perform = perform
        self.observed = observed
        self.before_write = before_write
        #: "fresh"/"adopted" if it moved the tensor to another storage (the old one kept)
        self.before_overwrite = before_overwrite
        #: tensor id -> storage pointer it was moved to that way (not a user re-pointing)
        self.moved: dict[int, int] = {}
        #: tensors user code took as raw memory, as they were then (compared after the call)
        self.raw: dict[int, TensorState] = {}
        #: storages copy_ sources gave to model tensors (see Transaction.before_overwrite),
        #: and how a source takes its own copy back
        self.adopted: dict[int, Any] = {}
        self.release_source: Callable[[int], None] = lambda ptr: None
        self._index: dict[int, list[Tensor]] | None = None
        #: the model's parameters and buffers (the running session's walk of its tree)
        self.tensors: Callable[[], list[Tensor]] = lambda: [*root.parameters(), *root.buffers()]
        #: how many times a model tensor was moved to another storage (indexes by storage
        #: are stale when it changes)
        self.moves = 0

    # -- the pending set ----------------------------------------------------------------------
    def add(self, batch: tuple[Write, ...]) -> None:
        for w in batch:
            self.writes.pop(id(w.tensor), None)  # the later write wins, and goes last
            self.writes[id(w.tensor)] = w

    def take(self, keep: Callable[[Write], bool] | None = None) -> tuple[Write, ...]:
        """Remove and return the pending writes (those ``keep`` selects), in order."""
        if keep is None:
            out = tuple(self.writes.values())
            self.writes.clear()
            return out
        out = tuple(w for w in self.writes.values() if keep(w))
        for w in out:
            del self.writes[id(w.tensor)]
        return out

    def force(self, tensor: Tensor) -> None:
        """Do the pending write of ``tensor`` now (with its group's)."""
        w = self.writes.get(id(tensor))
        if w is None:
            return
        group = w.op.group
        self.perform(self.take(lambda x: x is w or (group is not None and x.op.group == group)))

    def cancel(self, tensor: Tensor) -> None:
        """User code overwrote ``tensor`` whole: its pending write is not needed."""
        w = self.writes.get(id(tensor))
        if w is not None:
            if w.op.group is not None:  # one call writes several tensors: do it, then overwrite
                self.force(tensor)
            else:
                del self.writes[id(tensor)]

    # -- the model's storages -----------------------------------------------------------------
    def index(self) -> dict[int, list[Tensor]]:
        if self._index is None:
            index: dict[int, list[Tensor]] = {}
            for t in self.tensors():
                if not t.is_meta:
                    ptr = _storage_ptr(t)
                    if ptr:
                        index.setdefault(ptr, []).append(t)
            self._index = index
        return self._index

    def count_moves(self) -> int:
        return self.moves

    def reindex(self) -> None:
        self._index = None
        self.moves += 1

    def moved_by_run(self, t: Tensor, old: int) -> None:
        """The run gave ``t`` a fresh storage (its old one at ``old`` kept to undo)."""
        self._move(t, old)

    def _move(self, t: Tensor, old: int) -> None:
        self.moves += 1
        new = _storage_ptr(t)
        self.moved[id(t)] = new
        if self._index is not None:
            owners = [x for x in self._index.get(old, ()) if x is not t]
            if owners:
                self._index[old] = owners
            else:
                self._index.pop(old, None)
            self._index.setdefault(new, []).append(t)

    def raw_access(self, a: Tensor) -> None:
        """``a``'s memory leaves for code no op shows: do its pending writes, keep a copy
        and its digest (:attr:`raw`, compared after the call)."""
        if a.is_meta:
            return
        lo, hi = _span(a)
        for t in self.index().get(_storage_ptr(a), ()):
            t_lo, t_hi = _span(t)
            if hi <= t_lo or t_hi <= lo:
                continue
            self.force(t)
            self.before_write(t)
            self.raw.setdefault(id(t), TensorState.of(t))

    def defer_fill(self, func: Any, args: tuple, dist: Elementwise) -> bool:
        """User code fills ``t = args[0]`` whole with ``dist`` (a draw or a constant): if ``t``
        is a tensor of the model that alone holds its storage, keep the fill pending (a
        :class:`~.userfills.UserDraw`; a draw's key is drawn now); the op's record entry is
        made now. False: not so."""
        t = args[0]
        ptr = _storage_ptr(t)
        owners = self.index().get(ptr)
        if not owners or len(owners) != 1 or owners[0] is not t or ptr in self.adopted:
            return False
        self.cancel(t)
        self.add((Write(t, UserDraw(dist, unseeded_key(dist) if dist.random else 0)),))
        self.observed(t, attribute(func, args))
        return True

    def chain(self, func: Any, args: tuple, kwargs: dict) -> bool:
        """An elementwise op with numbers only on a tensor whose user draw is pending: it
        joins the draw (done on the drawn values). False: not so."""
        w = self.writes.get(id(args[0])) if args and isinstance(args[0], Tensor) else None
        if w is None or not is_user_draw(w.op) or w.tensor is not args[0] \
                or not chainable(func, args, kwargs):
            return False
        self.writes[id(w.tensor)] = Write(w.tensor, w.op.then(func, args, kwargs))
        self.observed(w.tensor, attribute(func, args))
        return True

    def before_op(self, func: Any, args: tuple, kwargs: dict) -> bool:
        """User code is about to run ``func``: do pending writes it reads, cancel the ones it
        overwrites, and report the model tensors it writes. True: the op is done already
        (a whole ``copy_`` whose source storage the tensor took)."""
        index = self.index()
        hits = []
        for a in _tensors(args, kwargs):
            if not a.is_meta:
                owners = index.get(_storage_ptr(a))
                if owners:
                    hits.append((a, owners))
        if not hits:
            return False
        pos, kw = _written_args(func)
        written = [args[i] for i in pos if i < len(args)] + [kwargs[k] for k in kw if k in kwargs]
        if self.adopted:  # a storage a copy_ source gave: the source takes its own copy first
            for w in written:
                if isinstance(w, Tensor) and _storage_ptr(w) in self.adopted:
                    self.release_source(_storage_ptr(w))
        overwrite = func.overloadpacket.__name__ in _OVERWRITES
        text: str | None = None
        named = False
        skip = False
        for a, owners in hits:
            is_written = any(a is w for w in written)
            lo, hi = _span(a) if len(owners) > 1 or owners[0] is not a else (0, 0)
            for t in owners:
                if t is not a:  # (the op's own argument: the same bytes, nothing to compare)
                    t_lo, t_hi = _span(t)
                    if hi <= t_lo or t_hi <= lo:
                        continue
                if is_written and overwrite and (t is a or _same_region(a, t)):
                    self.cancel(t)
                    if a is t:
                        old = _storage_ptr(t)
                        how = self.before_overwrite(t, _copy_source(func, args, index))
                        if how is not None:
                            self._move(t, old)
                        skip = skip or how == "adopted"
                    else:
                        self.before_write(t)
                else:
                    self.force(t)
                    if is_written:
                        self.before_write(t)
                if is_written:
                    if not named:
                        text, named = attribute(func, args), True
                    self.observed(t, text)
        return skip


def _copy_source(func: Any, args: tuple, index: dict[int, list[Tensor]]) -> Tensor | None:
    """The source of a ``copy_`` that is not a tensor of the model (which it may then
    give its storage to)."""
    if func is not torch.ops.aten.copy_.default or len(args) < 2 \
            or not isinstance(args[1], Tensor) or args[1].is_meta:
        return None
    return None if _storage_ptr(args[1]) in index else args[1]


class WriteWatch(TorchDispatchMode):
    """Routes every ATen op user code runs through :meth:`Pending.before_op` while active."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # no torch.compile wrapper around each op (this mode never compiles)

    def __init__(self, pending: Pending, lock: Any = None) -> None:
        super().__init__()
        self.pending = pending
        #: innermost last: True while user code runs, False while the library runs inside it
        self.active: list[bool] = []
        #: one run's bookkeeping, shared with the watches of the threads its user code starts
        self.lock = lock if lock is not None else threading.RLock()
        #: draw user code's large unseeded fills in pieces on every core (off in seeded
        #: runs: their fills are drawn from the tiles below this watch)
        self.pieces = True
        #: stepped off the dispatch stack while the library runs inside user code
        self.off = False

    def for_thread(self) -> WriteWatch:
        """A watch of the same run for a thread user code starts (modes are per thread)."""
        watch = WriteWatch(self.pending, self.lock)
        watch.pieces = self.pieces
        return watch

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if self.active and self.active[-1] and not func.is_view:
            dist = user_fill(func, args, kwargs) if self.pieces and func in FILLS else None
            with self.lock:
                if dist is not None and self.pending.defer_fill(func, args, dist) \
                        or self.pending.chain(func, args, kwargs):
                    return args[0]  # (written when needed, see .userfills)
                if self.pending.before_op(func, args, kwargs):
                    return args[0]
            if dist is not None and dist.random and args[0].numel() >= UNSEEDED_MIN:
                # (smaller, or a constant: torch's op)
                UserDraw(dist, unseeded_key(dist)).write(args[0])
                return args[0]
        return func(*args, **kwargs)

    def _raw_read(self, tensor: Tensor) -> None:
        """User code hands ``tensor``'s memory out (``.numpy()``, ...): its pending write
        first, and a copy for the transaction (compared after the call)."""
        if not (self.active and self.active[-1]) or not isinstance(tensor, Tensor):
            return
        self.active.append(False)  # the pending writes done here are the library's
        try:
            with self.lock:
                self.pending.raw_access(tensor)
        finally:
            self.active.pop()

    @contextlib.contextmanager
    def state(self, active: bool, step_off: bool = False) -> Iterator[None]:
        """User code (``active``) or the library inside it runs in this block. ``step_off``:
        the library runs much here (plans and writes, loads a checkpoint), so the watch
        leaves the dispatch stack for the block when it is on top, and the library's ops
        do not pass through it (leaving and coming back costs some microseconds)."""
        outermost = not self.active
        self.active.append(active)
        try:
            if outermost and active:
                with self, raw_reads(self._raw_read):
                    yield
            elif active and self.off:  # user code again, inside the library: watched
                self.off = False
                try:
                    with self:
                        yield
                finally:
                    self.off = True
            elif step_off and not active and self.active[-2] and self.leave():
                try:
                    yield
                finally:
                    self.come_back()
            else:
                yield
        finally:
            self.active.pop()

    def leave(self) -> bool:
        """Leave the dispatch stack, if on top (True: left; :meth:`come_back` returns)."""
        if self.off or top_dispatch_mode() is not self:
            return False
        self.__exit__(None, None, None)
        self.off = True
        return True

    def come_back(self) -> None:
        self.off = False
        self.__enter__()


__all__ = ["Pending", "WriteWatch", "stop_at"]
