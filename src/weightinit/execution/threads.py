"""User code watched in the threads it starts.

Dispatch modes are per thread: a write that user code makes from a thread it
starts (``threading.Thread``, a ``ThreadPoolExecutor`` created inside
``init_weights``) would not be seen by the run's watch, so it would be neither
recorded nor undone on failure. While a watched call runs, every thread *that
call* starts runs its target under a watch of its own on the same run
(:func:`watching_threads`); threads started elsewhere are not touched.

``threading.Thread.start`` is wrapped once, on first use, and the wrapper
looks only at the starting thread's own state (a thread-local stack), so two
runs in two threads never see each other's threads and nothing changes for
code outside a run.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

#: the starting thread's context factories, innermost last
_local = threading.local()
_install_lock = threading.Lock()
_original_start: Callable[..., Any] | None = None


def _start(self: threading.Thread, *args: Any, **kwargs: Any) -> Any:
    factories = getattr(_local, "factories", None)
    started = getattr(_local, "started", None)
    if factories and factories[-1] is not None and started is not None:
        make = factories[-1]
        run = self.run

        def watched_run() -> None:
            with watching_threads(make), make():  # and the threads this one starts
                run()

        self.run = watched_run  # type: ignore[method-assign]
        started[-1].append(self)
    return _original_start(self, *args, **kwargs)  # type: ignore[misc] - set by _install


def _install() -> None:
    global _original_start
    with _install_lock:
        if _original_start is None:
            _original_start = threading.Thread.start
            threading.Thread.start = _start  # type: ignore[method-assign]


@contextlib.contextmanager
def watching_threads(make: Callable[[], AbstractContextManager[Any]] | None
                     ) -> Iterator[list[threading.Thread]]:
    """Threads the current thread starts in the block run their target inside ``make()``.

    Yields the list of threads started so far (to check they have ended).
    """
    _install()
    if not hasattr(_local, "factories"):
        _local.factories, _local.started = [], []
    _local.factories.append(make)
    _local.started.append([])
    try:
        yield _local.started[-1]
    finally:
        _local.factories.pop()
        _local.started.pop()


@contextlib.contextmanager
def unwatched() -> Iterator[None]:
    """Threads started in the block are the library's own (its fill pool): not watched."""
    if not hasattr(_local, "factories"):
        _local.factories, _local.started = [], []
    _local.factories.append(None)
    _local.started.append([])
    try:
        yield
    finally:
        _local.factories.pop()
        _local.started.pop()


__all__ = ["unwatched", "watching_threads"]
