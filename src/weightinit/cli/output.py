"""Where the command writes: tables on stdout, progress on a terminal's stderr.

Progress follows one rule: only on stderr, and only when it is a terminal.
A step shows a spinner while it runs; a step whose amount of work is known
(tensors to initialize or measure) shows a bar, ``M of N tensors`` and the
time remaining instead. Either ends with ``✓ step (N s)``. The initialization
is counted by watching the model (:func:`watch_writes`): tensors written one
by one (checkpoint copies, replayed defaults, user code) count as they are
written; rule fills drawn together in one parallel batch all count when the
batch ends, so until a first tensor is counted the bar pulses instead.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import torch.nn as nn
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

#: Width of tables when stdout is not a terminal (rich would otherwise use 80).
PIPE_WIDTH = 250
#: seconds between two looks at the model while it is initialized (:func:`watch_writes`)
WATCH_INTERVAL = 0.1


class Output:
    """Where the command writes: rich on stdout; progress on stderr only if it is a terminal."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        out = stdout or sys.stdout
        err = stderr or sys.stderr
        tty = hasattr(out, "isatty") and out.isatty()
        self.console = Console(file=out, width=None if tty else PIPE_WIDTH, highlight=False,
                               soft_wrap=not tty)
        self.stderr = err
        progress = hasattr(err, "isatty") and err.isatty()
        self.progress = Console(file=err, highlight=False) if progress else None

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console.print(*objects, **kwargs)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {text}", markup=True)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Show ``text`` with a spinner while the block runs (terminal only), then its time."""
        if self.progress is None:
            yield
            return
        start = time.perf_counter()
        with self.progress.status(text):
            yield
        self._done(text, start)

    @contextlib.contextmanager
    def counting(self, text: str, total: int, unit: str = "tensors", lazy: bool = False
                 ) -> Iterator[Callable[[int], None]]:
        """Show ``text`` with a bar, ``M of N <unit>`` and the time remaining while the block
        runs (terminal only), then its time. The block is given ``advance(n)``: n more done.

        ``lazy``: the count and time remaining appear once something is done — for
        work that may finish in one batch (until then the bar pulses), so that it
        never shows a count stuck at 0 and no time remaining.
        """
        if self.progress is None:
            yield lambda n: None
            return
        start = time.perf_counter()
        bar = progress_bar(self.progress, unit)
        task = bar.add_task(text, total=None if lazy else total)
        shown = [not lazy]

        def advance(n: int) -> None:
            if not shown[0]:
                shown[0] = True
                bar.update(task, total=total)
            bar.advance(task, n)

        with bar:
            yield advance
        self._done(text, start)

    def _done(self, text: str, start: float) -> None:
        if self.progress is not None:
            self.progress.print(f"[green]✓[/green] {text} [dim]({time.perf_counter() - start:.1f}"
                                " s)[/dim]")


class _Known(ProgressColumn):
    """A column shown only once the task's total is known (blank while the bar pulses)."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__(table_column=Column(no_wrap=True))
        self.column = column

    def render(self, task: Task) -> RenderableType:
        return self.column.render(task) if task.total is not None else Text("")


def progress_bar(console: Console, unit: str) -> Progress:
    """The bar of a step with an amount of work: ``M of N <unit>``, time remaining."""
    return Progress(SpinnerColumn(),
                    TextColumn("{task.description}",
                               table_column=Column(no_wrap=True, overflow="ellipsis")),
                    BarColumn(bar_width=24),
                    _Known(MofNCompleteColumn(separator=" of ")),
                    _Known(TextColumn(unit)), _Known(TimeRemainingColumn()),
                    console=console, transient=True)


def _slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, name) for m in model.modules() for name, p in m._parameters.items()
            if p is not None]


def parameter_slots(model: nn.Module) -> int:
    """How many parameter slots ``model`` has (a tied tensor counts in each of its slots)."""
    return len(_slots(model))


@contextlib.contextmanager
def watch_writes(model: nn.Module, advance: Callable[[int], None]) -> Iterator[None]:
    """Report, through ``advance``, each parameter slot of ``model`` written while the block
    runs (at most :func:`parameter_slots` in all).

    An initialization run has no progress callback, so a thread looks at the
    model every :data:`WATCH_INTERVAL` seconds: a slot has been written once
    its tensor's version counter moved (an in-place write, to the tensor or a
    view of it, moves it), or once it holds a new tensor that has been written
    (a materialized tensor starts at 0). The thread only reads module
    dictionaries and version counters, and stops when the block ends.
    """
    slots = _slots(model)
    before = [(id(m._parameters[name]), m._parameters[name]._version) for m, name in slots]
    left = set(range(len(slots)))
    stop = threading.Event()

    def look() -> None:
        for i in list(left):
            m, name = slots[i]
            p = m._parameters.get(name)
            if p is None:
                continue
            tensor, version = before[i]
            if (p._version != version) if id(p) == tensor else (p._version > 0):
                left.discard(i)
                advance(1)

    def run() -> None:
        while not stop.wait(WATCH_INTERVAL):
            look()

    thread = threading.Thread(target=run, name="weightinit-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    look()  # the last writes, so the step ends on its true count


def one_line(err: BaseException) -> str:
    """An error as one line (its text with whitespace collapsed, else its type)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__
