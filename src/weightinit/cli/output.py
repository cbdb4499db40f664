"""Where the command writes: tables on stdout, progress on a terminal's stderr."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from rich.console import Console

#: Width of tables when stdout is not a terminal (rich would otherwise use 80).
PIPE_WIDTH = 250


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
        self.progress.print(f"[green]✓[/green] {text} [dim]({time.perf_counter() - start:.1f} s)"
                            "[/dim]")


def one_line(err: BaseException) -> str:
    """An error as one line (its text with whitespace collapsed, else its type)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__
