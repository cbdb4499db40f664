"""The last writes of a run go straight into the model's memory, with nothing kept to undo them.

A run that may fail after planning (user code, checkpoint reads) keeps what undoes each
write (:mod:`.transaction`): a tensor filled whole gets a fresh storage and its old one is
set aside. Fresh memory is paid for twice: torch allocates it, and the system maps in
each page at first touch — about 0.4 ms per MB here, more than drawing the values of a
constant fill and two thirds of a ``normal_`` again. Yet most of those fills are done
when the run ends, after the last user call (the pending writes user code did not need
or cancel), and what can still fail then is known: checkpoint reads, the checks after
them. So the run's last writes are split (:func:`split_last`):

* first, with their undo kept as before, every write that can fail or that reads
  another tensor (checkpoint reads, grouped writes, replayed constructors, fills that
  are not elementwise), then the checks that end a run;
* then, in place into the memory the tensors already have, the elementwise fills that
  write their tensor whole and read nothing (:func:`~weightinit.planning.ops.fills_whole`),
  which draw from a distribution into memory that exists: nothing there can fail but the
  machine itself.

A fill moves to the end only if no write it would now follow reads or writes other
tensors than its own, so every tensor gets the value it would have in plan order.
Ctrl-C arriving while those fills run is held until the run has committed
(:func:`interrupts_held`), then raised: the model is never left half written by an
interrupt. (An out-of-memory error in a worker thread there, the one failure left, would
leave those tensors partly written; the rest of the model is still restored.)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

from ..planning import CheckpointRead, OpKind, Write
from ..planning.layout import is_sharded
from ..planning.ops import fills_whole


def _own_tensor_only(w: Write) -> bool:
    """``w`` reads and writes its own tensor only (a checkpoint entry, or a rule's write of one
    tensor); anything else (a grouped call, a replayed constructor) may touch others."""
    return w.op.group is None and (isinstance(w.op, CheckpointRead) or w.op.kind is OpKind.RULE)


def _in_place(w: Write) -> bool:
    t = w.tensor
    return (t.device.type != "meta" and not is_sharded(t) and fills_whole(t, w.op)
            and type(t.data) is torch.Tensor)


def split_last(writes: tuple[Write, ...]) -> tuple[tuple[Write, ...], tuple[Write, ...]]:
    """``(kept, in_place)``: the run's last writes, split as the module says. ``kept`` keeps
    the plan's order; ``in_place`` holds the whole elementwise fills after the last write that
    may touch another tensor, in plan order."""
    barrier = -1
    for i, w in enumerate(writes):
        if not _in_place(w) and not _own_tensor_only(w):
            barrier = i
    kept = [w for i, w in enumerate(writes) if i <= barrier or not _in_place(w)]
    in_place = [w for i, w in enumerate(writes) if i > barrier and _in_place(w)]
    return tuple(kept), tuple(in_place)


class _Held:
    """Signals caught while held; raised, by the handler that was there, when released."""

    def __init__(self) -> None:
        self.caught: list[tuple[int, Any]] = []
        self.previous: Any = None
        self.active = False

    def hold(self) -> None:
        """From now until the block ends, Ctrl-C waits (main thread with a Python handler
        only: elsewhere no signal can interrupt the run's thread)."""
        if self.active or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous):  # SIG_IGN / SIG_DFL / a handler set outside Python
            return
        self.previous = previous
        signal.signal(signal.SIGINT, lambda signum, frame: self.caught.append((signum, frame)))
        self.active = True

    def release(self, raise_caught: bool) -> None:
        if not self.active:
            return
        self.active = False
        signal.signal(signal.SIGINT, self.previous)
        if self.caught and raise_caught:
            self.previous(*self.caught[0])


@contextlib.contextmanager
def interrupts_held() -> Iterator[_Held]:
    """A block in which :meth:`_Held.hold` makes Ctrl-C wait for the block's end; it is then
    raised there (by the handler that was installed), unless an error already leaves it."""
    held = _Held()
    try:
        yield held
    except BaseException:
        held.release(raise_caught=False)  # the error unwinds the run already
        raise
    held.release(raise_caught=True)
