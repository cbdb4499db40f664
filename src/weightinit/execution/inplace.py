"""The last writes of a run go straight into the model's memory, with nothing kept to undo them.

A run that may fail after planning (user code, checkpoint reads) keeps what undoes each
write (:mod:`.transaction`): a tensor filled whole gets a fresh storage and its old one is
set aside. Fresh memory is paid for twice: torch allocates it, and the system maps in
each page at first touch — about 0.4 ms per MB here, more than drawing the values of a
constant fill and two thirds of a ``normal_`` again. Yet most of those fills are done
when the run ends, after the last user call (the pending writes user code did not need
or cancel), and what can still fail then is known: reading a checkpoint's entries, the
checks after them. So the run's last writes are split (:func:`split_last`):

* first, with their undo kept as before, every write that can fail or that reads
  another tensor (grouped writes, replayed constructors, fills that are not elementwise,
  checkpoint reads into another dtype), then the checks that end a run; the checkpoint
  entries read last are read (and checked for NaN) there, before anything is written
  in place (:func:`check_reads`);
* then, in place into the memory the tensors already have, the elementwise fills that
  write their tensor whole and read nothing (:func:`~weightinit.planning.ops.fills_whole`)
  and the copies of checkpoint entries already read into tensors of their dtype: nothing
  there can fail but the machine itself.

A write moves to the end only past checkpoint reads, which read no other tensor and draw
no random numbers: every tensor gets the value it would have in plan order, and an
unseeded run draws from torch's generator in the same order.
Ctrl-C arriving while those fills run is held until the run has committed
(:func:`interrupts_held`), then raised: the model is never left half written by an
interrupt. (An out-of-memory error in a worker thread there, the one failure left, would
leave those tensors partly written; the rest of the model is still restored.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

from ..planning import CheckpointRead, Write
from ..planning.checkpoint_checks import finite_each
from ..planning.layout import is_sharded
from ..planning.ops import fills_whole
from .userfills import is_user_draw


def _passable(w: Write) -> bool:
    """A fill may move past ``w``: a checkpoint read (its own tensor only, no random draw).
    Anything else may read another tensor (a grouped call, a replayed constructor) or draw
    from the generator a fill draws from (an orthogonal or sparse rule)."""
    return isinstance(w.op, CheckpointRead) or is_user_draw(w.op)  # (its key is drawn)


def _in_place(w: Write) -> bool:
    t = w.tensor
    if t.device.type == "meta" or is_sharded(t) or type(t.data) is not torch.Tensor:
        return False
    if isinstance(w.op, CheckpointRead):  # (copied bit for bit: its NaN check is the entry's)
        return w.op.state.dtype(w.op.key) == t.dtype
    return fills_whole(t, w.op)


def split_last(writes: tuple[Write, ...]) -> tuple[tuple[Write, ...], tuple[Write, ...]]:
    """``(kept, in_place)``: the run's last writes, split as the module says. ``kept`` keeps
    the plan's order; ``in_place`` holds the whole elementwise fills after the last write a
    fill may not move past, in plan order."""
    movable = [_in_place(w) for w in writes]  # (once each: a read may ask its file's header)
    barrier = -1
    for i, w in enumerate(writes):
        if not movable[i] and not _passable(w):
            barrier = i
    kept = [w for i, w in enumerate(writes) if i <= barrier or not movable[i]]
    in_place = [w for i, w in enumerate(writes) if i > barrier and movable[i]]
    return tuple(kept), tuple(in_place)


def check_reads(in_place: tuple[Write, ...]) -> tuple[Write, ...]:
    """Read the checkpoint entries of the run's last writes and note those holding NaN or
    infinity in their load's report (what :meth:`CheckpointRead.check_finite` notes after a
    copy: the same bits), before anything is written in place. Returns the writes to do,
    the reads no longer checking what they copied."""
    reads = [i for i, w in enumerate(in_place) if isinstance(w.op, CheckpointRead)]
    values = [in_place[i].op.value() for i in reads]
    out = list(in_place)
    for i, value, finite in zip(reads, values, finite_each(values)):
        op = in_place[i].op
        if op.report is not None and not finite:
            op.report.nonfinite.append(op.key)
        out[i] = dataclasses.replace(out[i], op=dataclasses.replace(op, report=None, read=value))
    return tuple(out)


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
