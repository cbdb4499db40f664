"""Run independent fill jobs on several CPU threads at once.

PyTorch draws ``normal_`` and ``uniform_`` on the CPU on one thread (the
generator is sequential), but it releases the GIL inside the op: pieces of
a tensor drawn from *separate* generators can be drawn by separate Python
threads at the same time. :func:`run_jobs` does that with one lazily made,
reused thread pool; the caller's thread takes a share of the jobs too. Pool
threads run their ops single-threaded (their own OpenMP thread count is set
to 1): the pool is the parallelism.

The number of threads is ``torch.get_num_threads()``, or the environment
variable ``WEIGHTINIT_NUM_THREADS`` when set (read at each call; ``1``
turns the threads off). Which thread runs a job never changes what it
writes: every job owns its generator.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from .threads import unwatched
from .tiles import TILE, RegionFill, Scratch

ENV_THREADS = "WEIGHTINIT_NUM_THREADS"
#: elements a thread takes at once (one tile), and the least when there is little to do
CHUNK = TILE
MIN_CHUNK = 1 << 14

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()
_LOCAL = threading.local()  # .worker: this thread is one of the pool's


def num_threads() -> int:
    """Threads a fill may use: ``WEIGHTINIT_NUM_THREADS`` if set (and a positive int), else
    ``torch.get_num_threads()``; 1 inside a pool thread (no nested fan-out)."""
    if getattr(_LOCAL, "worker", False):
        return 1
    env = os.environ.get(ENV_THREADS, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, torch.get_num_threads())


def _openmp_runtime() -> Any:
    """The OpenMP runtime torch loaded (libgomp, libiomp5 or libomp), found in this process's
    memory map (Linux), or ``None``."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        name = os.path.basename(path)
        if name.startswith(("libgomp", "libiomp5", "libomp")):
            try:
                return ctypes.CDLL(path)  # already loaded: the same handle
            except OSError:
                return None
    return None


_RUNTIME: list[Any] = []  # [the OpenMP runtime or None], found once


def _runtime() -> Any:
    if not _RUNTIME:
        runtime = _openmp_runtime()
        ok = runtime is not None and all(hasattr(runtime, f) for f in (
            "omp_set_num_threads", "omp_get_max_threads"))
        _RUNTIME.append(runtime if ok else None)
    return _RUNTIME[0]


@contextlib.contextmanager
def _one_openmp_thread() -> Iterator[None]:
    """This thread's torch ops run on it alone inside the block (its own OpenMP thread count,
    restored after; other threads are not affected)."""
    runtime = _runtime()
    if runtime is None:
        yield
        return
    before = runtime.omp_get_max_threads()
    runtime.omp_set_num_threads(1)
    try:
        yield
    finally:
        runtime.omp_set_num_threads(before)


def _mark_worker() -> None:
    """Pool thread start-up: its torch ops run on this thread alone.

    The pool already uses every core, so an op's own OpenMP team in a pool
    thread would only oversubscribe them (and its threads spin after each
    op, taking a core from the other pieces). torch sets a thread's OpenMP
    thread count on its first parallel op; after that, this thread's (and
    only this thread's) count is set to 1.
    """
    _LOCAL.worker = True
    torch.zeros(1 << 16).add_(1)  # torch's lazy per-thread OpenMP set-up runs here
    runtime = _runtime()
    if runtime is not None:
        runtime.omp_set_num_threads(1)


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            old = _POOL
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="weightinit-fill",
                                       initializer=_mark_worker)
            _POOL_SIZE = workers
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def _forget_pool() -> None:
    # a forked child has none of the parent's threads: it makes its own pool when needed
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def parallel_target(tensor: Tensor) -> bool:
    """Whether ``tensor`` may be filled piecewise from pool threads: a plain CPU tensor
    (no subclass such as DTensor or a fake tensor, whose ops need the caller's modes)."""
    return tensor.device.type == "cpu" and type(tensor) in (Tensor, torch.nn.Parameter)


def chunks(costs: Sequence[int], threads: int) -> list[list[int]]:
    """Indices of ``costs`` in contiguous groups, each of about :data:`CHUNK` cost (fewer when
    the whole is small, so every thread still gets several): the units threads take."""
    target = max(MIN_CHUNK, min(CHUNK, sum(costs) // (8 * threads)))
    groups: list[list[int]] = [[]]
    held = 0
    for i, cost in enumerate(costs):
        if held >= target:
            groups.append([])
            held = 0
        groups[-1].append(i)
        held += cost
    return groups if groups[0] else []


def run_jobs(jobs: Sequence[Callable[[], None]], costs: Sequence[int],
             threads: int | None = None) -> None:
    """Run every job once on ``threads`` threads (default :func:`num_threads`), the caller's
    included: each thread takes the next group of jobs (:func:`chunks`) until none is left,
    so a thread slowed down (another process, fresh pages) takes fewer. Every job runs;
    the first job error is raised after all end."""
    threads = num_threads() if threads is None else threads
    if threads <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    groups = chunks(costs, threads)
    take = itertools.count().__next__  # (atomic under the GIL)
    errors: list[BaseException] = []

    def run() -> None:
        with torch.no_grad():
            while (g := take()) < len(groups):
                for i in groups[g]:
                    try:
                        jobs[i]()
                    except Exception as err:  # the others still run; raised at the end
                        errors.append(err)

    with unwatched():  # (a pool thread made while user code runs is still the library's)
        pool = _pool(threads - 1)
        futures: list[Future[None]] = [pool.submit(run) for _ in range(min(threads, len(groups)) - 1)]
    try:
        with _one_openmp_thread():  # the caller's share too: the pool is the parallelism
            run()
    finally:
        for fut in futures:
            try:
                fut.result()
            except BaseException as err:
                errors.append(err)
    if errors:
        raise errors[0]


def draw_all(fills: Sequence[RegionFill]) -> None:
    """Draw every tile of ``fills``: those of plain CPU tensors shared out between threads,
    the others here, in order."""
    if not fills:
        return
    scratch = Scratch()  # a tile per thread, freed when this batch is drawn
    with torch.no_grad():
        shared = [j for f in fills if parallel_target(f.out) for j in f.jobs(scratch)]
        if len(shared) > 1:
            run_jobs([j for j, _ in shared], [c for _, c in shared])
        else:
            for job, _ in shared:
                job()
        for f in fills:
            if not parallel_target(f.out):
                for job, _ in f.jobs(scratch):
                    job()
            f.done()


__all__ = ["ENV_THREADS", "chunks", "draw_all", "num_threads", "parallel_target", "run_jobs"]
