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

The watch (:class:`~.writewatch.WriteWatch`) is a ``TorchDispatchMode``: it sees every
ATen op, with ``.data`` aliases and views resolved to their storage, so writes through
``param.data`` are seen as well. Writes no op shows (a ``.data =``
assignment, a replaced ``nn.Parameter``) are found by comparing each
tensor's identity and storage pointer after the call — no value is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..compat import op_written_args
from ..maths.fills import Elementwise
from ..planning import Write
from .attribution import attribute, stop_at
from .userfills import chainable, is_user_draw, pending_fill
from .watch import TensorState
from .watch import storage_ptr as _storage_ptr

#: ops whose result does not depend on what the written tensor held
_OVERWRITES = frozenset({"normal_", "uniform_", "fill_", "zero_", "copy_", "random_",
                         "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_",
                         "eye", "normal", "zeros", "ones", "full", "rand", "randn"})
_WRITTEN: dict[Any, tuple[tuple[int, ...], tuple[str, ...]]] = {}
#: a write's text is read from the stack (unless the caller gives it)
_ASK = object()


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
        #: the op a ``before_overwrite`` was for wrote the tensor, or raised (the tensor goes
        #: back to the storage it had)
        self.overwrite_done: Callable[[Tensor], None] = lambda t: None
        self.overwrite_failed: Callable[[Tensor], None] = lambda t: None
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

    def defer_fill(self, func: Any, args: tuple, dist: Elementwise, text: Any = _ASK) -> bool:
        """User code fills ``t = args[0]`` whole with ``dist`` (a draw or a constant): if ``t``
        is a tensor of the model that alone holds its storage, keep the fill pending (a
        :class:`~.userfills.UserDraw`; a draw's key is drawn now); the op's record entry is
        made now (``text``: named so, not from the stack). False: not so."""
        t = args[0]
        ptr = _storage_ptr(t)
        owners = self.index().get(ptr)
        if not owners or len(owners) != 1 or owners[0] is not t or ptr in self.adopted:
            return False
        self.cancel(t)
        self.add((Write(t, pending_fill(dist)),))
        self.observed(t, attribute(func, args) if text is _ASK else text)
        return True

    def chain(self, func: Any, args: tuple, kwargs: dict, text: Any = _ASK) -> bool:
        """An elementwise op with numbers only on a tensor whose user draw is pending: it
        joins the draw (done on the drawn values). False: not so."""
        w = self.writes.get(id(args[0])) if args and isinstance(args[0], Tensor) else None
        if w is None or not is_user_draw(w.op) or w.tensor is not args[0] \
                or not chainable(func, args, kwargs):
            return False
        self.writes[id(w.tensor)] = Write(w.tensor, w.op.then(func, args, kwargs))
        self.observed(w.tensor, attribute(func, args) if text is _ASK else text)
        return True

    def before_op(self, func: Any, args: tuple, kwargs: dict) -> _OpBooks | None:
        """User code is about to run ``func``: do pending writes it reads, and prepare the
        model tensors it writes (kept to undo; one it overwrites whole moved to a fresh
        storage). What the op changes in the books is done by :meth:`after_op` once it ran,
        or undone by :meth:`op_failed` if it raised. None: it touches no model tensor."""
        index = self.index()
        hits = []
        for a in _tensors(args, kwargs):
            if not a.is_meta:
                owners = index.get(_storage_ptr(a))
                if owners:
                    hits.append((a, owners))
        if not hits:
            return None
        pos, kw = _written_args(func)
        written = [args[i] for i in pos if i < len(args)] + [kwargs[k] for k in kw if k in kwargs]
        if self.adopted:  # a storage a copy_ source gave: the source takes its own copy first
            for w in written:
                if isinstance(w, Tensor) and _storage_ptr(w) in self.adopted:
                    self.release_source(_storage_ptr(w))
        overwrite = func.overloadpacket.__name__ in _OVERWRITES and not (
            len(hits) > 1 and _reads_written(args, kwargs, pos, kw, written))
        books = _OpBooks(overwrite)
        text: str | None = None
        named = False
        for a, owners in hits:
            is_written = any(a is w for w in written)
            lo, hi = _span(a) if len(owners) > 1 or owners[0] is not a else (0, 0)
            for t in owners:
                if t is not a:  # (the op's own argument: the same bytes, nothing to compare)
                    t_lo, t_hi = _span(t)
                    if hi <= t_lo or t_hi <= lo:
                        continue
                if is_written and overwrite and (t is a or _same_region(a, t)):
                    self._cancel_after(t, books)
                    if a is t:
                        old = _storage_ptr(t)
                        how = self.before_overwrite(t, _copy_source(func, args, index))
                        if how is not None:
                            self._move(t, old)
                            books.moved.append((t, _storage_ptr(t)))
                        books.skip = books.skip or how == "adopted"
                    else:
                        self.before_write(t)
                else:
                    self.force(t)
                    if is_written:
                        self.before_write(t)
                if is_written:
                    if not named:
                        text, named = attribute(func, args), True
                    books.seen.append((t, text))
        return books

    def _cancel_after(self, t: Tensor, books: _OpBooks) -> None:
        """``t``'s pending write is not needed once the op overwrote it (a group's, written
        with other tensors, is done now)."""
        w = self.writes.get(id(t))
        if w is not None:
            if w.op.group is not None:
                self.force(t)
            else:
                books.cancel.append(w)

    def after_op(self, books: _OpBooks) -> None:
        """The op :meth:`before_op` saw wrote its tensors: drop the pending writes it made
        unnecessary, and record who wrote."""
        for w in books.cancel:
            if self.writes.get(id(w.tensor)) is w:
                del self.writes[id(w.tensor)]
        for t, _ in books.moved:
            self.overwrite_done(t)
        for t, text in books.seen:
            self.observed(t, text)

    def op_failed(self, books: _OpBooks) -> None:
        """The op :meth:`before_op` saw raised: the tensors it was to overwrite whole go back
        to the storages they had (their pending writes stay, their entries unchanged), as
        an op that raises leaves a tensor in eager torch. Any other op may have written
        part of its tensors before it raised (torch's ``index_put_``, ``scatter_`` with an
        index out of range do, and count no write): they are user code's writes."""
        for t, fresh in reversed(books.moved):
            self.overwrite_failed(t)
            self._move(t, fresh)
        if not books.overwrite:  # (overwrites check their arguments before writing)
            for t, text in books.seen:
                self.observed(t, text)


class _OpBooks:
    """What one op user code runs changes in the books, applied once it ran."""

    __slots__ = ("overwrite", "skip", "cancel", "moved", "seen")

    def __init__(self, overwrite: bool) -> None:
        #: the op overwrites what it writes whole (its result does not depend on it)
        self.overwrite = overwrite
        #: the op is done already (a whole copy_ whose source's storage the tensor took)
        self.skip = False
        #: pending writes it overwrites
        self.cancel: list[Write] = []
        #: (tensor, its fresh storage) for tensors moved to a fresh storage for it
        self.moved: list[tuple[Tensor, int]] = []
        #: (tensor, text) of the model tensors it writes
        self.seen: list[tuple[Tensor, str | None]] = []


def _reads_written(args: tuple, kwargs: dict, pos: tuple[int, ...], kw: tuple[str, ...],
                   written: list[Any]) -> bool:
    """An argument the op reads shares memory with one it writes (``t.copy_(t.view(...))``):
    not an overwrite (what it writes depends on what the tensor holds)."""
    ptrs = {_storage_ptr(w) for w in written if isinstance(w, Tensor) and not w.is_meta}
    read = [a for i, a in enumerate(args) if i not in pos] + [
        v for k, v in kwargs.items() if k not in kw]
    return any(not a.is_meta and _storage_ptr(a) in ptrs for a in _tensors(tuple(read), {}))


def _copy_source(func: Any, args: tuple, index: dict[int, list[Tensor]]) -> Tensor | None:
    """The source of a ``copy_`` that is not a tensor of the model (which it may then
    give its storage to)."""
    if func is not torch.ops.aten.copy_.default or len(args) < 2 \
            or not isinstance(args[1], Tensor) or args[1].is_meta:
        return None
    return None if _storage_ptr(args[1]) in index else args[1]


__all__ = ["Pending", "stop_at"]
