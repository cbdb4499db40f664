"""The watch on user code: every ATen op it runs, routed through :class:`~.pending.Pending`.

:class:`WriteWatch` is a ``TorchDispatchMode`` active while a run's user code runs
(:meth:`WriteWatch.state`). A whole fill the run may do later is kept pending
(:mod:`.userfills`); any other op that touches a model tensor has the books made
ready first (:meth:`.Pending.before_op`) and brought up to date after it ran — or
put back as they were if it raised, so user code that catches an op's error sees the
tensors as that op left them in eager torch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from torch import Tensor

from ..compat import TorchDispatchMode, top_dispatch_mode
from .pending import Pending
from .rawreads import raw_reads
from .seeding import UNSEEDED_MIN, unseeded_key
from .userfills import FILLS, UserDraw, user_fill


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
                books = self.pending.before_op(func, args, kwargs)
                if books is not None and books.skip:
                    self.pending.after_op(books)
                    return args[0]
            try:
                if dist is not None and dist.random and args[0].numel() >= UNSEEDED_MIN:
                    # (smaller, or a constant: torch's op)
                    UserDraw(dist, unseeded_key(dist)).write(args[0])
                    out = args[0]
                else:
                    out = func(*args, **kwargs)
            except BaseException:
                if books is not None:
                    with self.lock:
                        self.pending.op_failed(books)
                raise
            if books is not None:
                with self.lock:
                    self.pending.after_op(books)
            return out
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


__all__ = ["WriteWatch"]
