"""What ``bench_openmmlab.py`` (MMEngine) and ``bench_mmcv1.py`` (MMCV 1.x) share: timing a
library's own ``init_weights()`` against weightinit's bridge and the floor, on real models,
and the table of the results."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

#: ``timed(name, bridged, directory)``: seconds of one ``init_weights()`` of model ``name``
Timed = Callable[[str, bool, Path], float]


def _load_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``: hand every free page of the heap back to the system."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return lambda: None

    def trim_heap() -> None:
        trim(0)

    return trim_heap


#: Before each timed run, the heap's free pages go back to the system, so the run meets
#: the memory a training script's one ``init_weights()`` meets in a fresh process: pages
#: never touched. Without it, each run in this process would reuse whatever pages the
#: runs before it (of either side) freed, or not, as the allocator happens to keep them:
#: up to 30 ms either way on a model that reads a 100 MB checkpoint, as noise.
trim_heap = _load_trim()


def floor(n: int) -> float:
    """``torch.empty(n).normal_()``: one draw per element, allocation and first touch."""
    gc.collect()
    trim_heap()
    start = time.perf_counter()
    torch.empty(n).normal_()
    return time.perf_counter() - start


def time_init(name: str, bridged: bool, directory: Path, install: Callable[[], None],
              uninstall: Callable[[], None], build: Callable[[str, int], torch.nn.Module],
              localize: Callable[[torch.nn.Module, Path], object]) -> float:
    """Seconds of one ``init_weights()`` of model ``name`` built fresh (not timed), with the
    bridge installed before the build (as a training script does) when ``bridged``."""
    if bridged:
        install()
    try:
        model = build(name, 0)
        localize(model, directory)
        gc.collect()
        trim_heap()
        start = time.perf_counter()
        model.init_weights()
        return time.perf_counter() - start
    finally:
        if bridged:
            uninstall()


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of what ``values`` sample: the order
    statistics ``(k, n + 1 - k)`` with ``k`` the largest whose binomial tails leave at least
    ``confidence`` between them (the whole range when there are too few values)."""
    v = sorted(values)
    n = len(v)
    tail, k = 0.0, 0
    for i in range(n // 2):  # P(Binomial(n, 1/2) <= i), while both tails stay small enough
        tail += math.comb(n, i) / 2 ** n
        if 2 * tail > 1 - confidence:
            break
        k = i + 1
    return (v[k - 1], v[n - k]) if k else (v[0], v[-1])


def measure(models: list[str], threads: list[int], repeats: int, timed: Timed,
            params: Callable[[str], int], setup: Callable[[Path], None] | None = None
            ) -> list[tuple[str, int, int, dict[str, float]]]:
    """``(model, threads, parameter elements, medians)`` rows, medians of ``mm`` (the
    library), ``wi`` (the bridge) and ``floor``; the rounds of all thread counts rotate
    together and the two sides alternate who goes first, so a busy moment hits both.
    ``ratio``: the median of each round's ``mm / wi`` (the two runs of a round are next to
    each other: a slow minute of the machine slows both), ``low``/``high``: its 95 %
    interval (:func:`median_interval`)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if setup is not None:
            setup(Path(tmp))
        for name in models:
            files = Path(tmp) / name  # each model's own checkpoint files
            files.mkdir()
            n = params(name)
            times: dict[tuple[int, str], list[float]] = {
                (t, k): [] for t in threads for k in ("mm", "wi", "floor")}
            timed(name, True, files)  # warm-up (imports, caches, first allocations)
            for r in range(repeats):
                for t in threads:
                    torch.set_num_threads(t)
                    order = [("mm", False), ("wi", True)]
                    for key, bridged in order if r % 2 == 0 else order[::-1]:
                        times[(t, key)].append(timed(name, bridged, files))
                    times[(t, "floor")].append(floor(n))
            for t in threads:
                med = {k: statistics.median(times[(t, k)]) for k in ("mm", "wi", "floor")}
                ratios = [a / b for a, b in zip(times[(t, "mm")], times[(t, "wi")])]
                med["ratio"] = statistics.median(ratios)
                med["low"], med["high"] = median_interval(ratios)
                rows.append((name, t, n, med))
                print(f"{name} ({t} threads): {med}", file=sys.stderr)
    return rows


def report(rows: list[tuple[str, int, int, dict[str, float]]], library: str, title: str,
           markdown: bool) -> None:
    """The table of :func:`measure`'s rows (rich, or Markdown), and the verdict: a row is
    slower when even the top of its ratio's 95 % interval is below 1, faster when even the
    bottom is above 1, and not told apart from the library's on this machine otherwise."""
    headers = ["model", "threads", "params", "floor s", f"{library} s", "weightinit s",
               f"{library}/weightinit", "95 % interval", "weightinit/floor"]
    cells = [[name, str(t), f"{n / 1e6:.1f} M", f"{m['floor']:.3f}", f"{m['mm']:.3f}",
              f"{m['wi']:.3f}", f"{m['ratio']:.2f}x", f"{m['low']:.2f}-{m['high']:.2f}",
              f"{m['wi'] / m['floor']:.2f}"]
             for name, t, n, m in rows]
    slower = [f"{name} ({t} threads)" for name, t, _, m in rows if m["high"] < 1]
    level = [f"{name} ({t} threads)" for name, t, _, m in rows if m["low"] <= 1 <= m["high"]]
    verdict = (f"weightinit slower than {library} on: " + ", ".join(slower) if slower
               else f"weightinit never slower than {library}")
    faster = sum(m["low"] > 1 for _, _, _, m in rows)
    verdict += (f"; faster on {faster} of {len(rows)} rows" if faster < len(rows)
                else "; faster on every row")
    if level:
        verdict += "; not told apart from it on this machine: " + ", ".join(level)
    if markdown:
        print(f"{title}\n\n| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
        for c in cells:
            print("| " + " | ".join(c) + " |")
        print(f"\n{verdict}")
        return
    table = Table(title=title, caption=verdict)
    for h in headers:
        table.add_column(h, justify="left" if h == "model" else "right")
    for c in cells:
        table.add_row(*c)
    Console().print(table)
