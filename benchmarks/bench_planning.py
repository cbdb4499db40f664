"""Benchmark how planning and ``init_weights()`` scale with the number of modules.

What is measured
----------------
The model is a ``weightinit.ModuleList`` of N leaves. Each leaf is a small
``weightinit.BaseModule`` subclass with its own ``init_cfg``
(``dict(type='Constant', layer='Linear', val=1)``) that holds one
``nn.Linear(4, 4)`` (20 parameter elements). For each N in ``--sizes``
(default 1000, 10000, 50000) and each of ``--repeats`` rounds:

* **plan** — build a fresh model (not timed), then time
  ``weightinit.plan(model)``;
* **init** — build a fresh model (not timed), then time
  ``model.init_weights()``;
* **MMEngine** — the same model on ``mmengine.model.BaseModule`` /
  ``ModuleList`` (not timed), then time its ``init_weights()``, with
  MMEngine's per-parameter INFO logging silenced as in ``bench_init.py``.
  ``n/a`` when MMEngine is not importable (or with ``--no-mmengine``);
* **floor** — time ``torch.empty(n).normal_()`` for the model's ``n``
  parameter elements (20 N), allocation included: the physical cost of
  writing the numbers once.

Every timed region starts right after ``gc.collect()`` and is timed with
``time.perf_counter``; the kinds run in a rotating order from round to round
and the table reports medians. The per-module columns divide by N; the last
line gives max/min of the per-module time across sizes for plan and init:
planning and init are linear in the number of modules when that ratio stays
within 1.5x.

Run from the repository root::

    python benchmarks/bench_planning.py                     # rich table
    python benchmarks/bench_planning.py --markdown          # Markdown table
    python benchmarks/bench_planning.py --sizes 1000 10000 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table

import weightinit

LINEAR_TARGET = 1.5  # max/min of the per-module time across sizes
KINDS = ("plan", "init", "mmengine", "floor")
LEAF_CFG = dict(type="Constant", layer="Linear", val=1)


@cache
def leaf_class(base: type) -> type:
    """A leaf on ``base`` (weightinit's or MMEngine's ``BaseModule``): one Linear, own init_cfg."""

    class Leaf(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(init_cfg=dict(LEAF_CFG))
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    return Leaf


def build(base: type, module_list: type, n: int) -> nn.Module:
    leaf = leaf_class(base)
    return module_list([leaf() for _ in range(n)])


def load_mmengine() -> tuple[tuple[type, type] | None, str | None]:
    """MMEngine's ``BaseModule`` and ``ModuleList`` with its logger silenced, or a note why not."""
    try:
        import mmengine  # noqa: F401
        from mmengine.logging import MMLogger
        from mmengine.model import BaseModule, ModuleList
    except ImportError as exc:
        return None, f"MMEngine is not importable ({exc}): its column reads n/a."
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    return (BaseModule, ModuleList), None


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes, after a ``gc.collect()``; its result is freed after."""
    gc.collect()
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def bench_size(n: int, mm: tuple[type, type] | None, repeats: int,
               console: Console) -> dict[str, float | None]:
    """Medians (seconds) of each kind for a model of ``n`` leaves."""
    wi = (weightinit.BaseModule, weightinit.ModuleList)
    numel = 20 * n

    def time_plan() -> float:
        model = build(*wi, n)
        return timed(lambda: weightinit.plan(model))

    def time_init() -> float:
        model = build(*wi, n)
        return timed(model.init_weights)

    timers: dict[str, Callable[[], float]] = {
        "plan": time_plan,
        "init": time_init,
        "floor": lambda: timed(lambda: torch.empty(numel).normal_()),
    }
    if mm is not None:
        mm_classes = mm

        def time_mm() -> float:
            model = build(*mm_classes, n)
            return timed(model.init_weights)

        timers["mmengine"] = time_mm

    times: dict[str, list[float]] = {kind: [] for kind in timers}
    order = list(timers)
    for r in range(repeats):
        shift = r % len(order)
        for kind in order[shift:] + order[:shift]:
            times[kind].append(timers[kind]())
        console.log(f"N={n}: round {r + 1}/{repeats} "
                    + " ".join(f"{k}={t[-1] * 1e3:.1f}ms" for k, t in times.items()))
    return {kind: statistics.median(times[kind]) if kind in times else None for kind in KINDS}


def fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f}"


def fmt_us(seconds: float | None, n: int) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6 / n:.2f}"


def spread(results: dict[int, dict[str, float | None]], kind: str) -> float | None:
    """max/min of the per-module time of ``kind`` across sizes."""
    per = [r[kind] / n for n, r in results.items() if r[kind]]
    return max(per) / min(per) if len(per) > 1 else None


def verdict(ratio: float | None) -> str:
    if ratio is None:
        return "n/a (one size)"
    return f"{ratio:.2f}x {'✓' if ratio <= LINEAR_TARGET else '✗'}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000],
                        help="numbers of leaf modules (default: 1000 10000 50000)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds per size; medians are reported (default: 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--no-mmengine", action="store_true",
                        help="skip MMEngine even when it is importable")
    parser.add_argument("--markdown", action="store_true",
                        help="print a Markdown table instead of a rich table")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the medians as JSON to PATH (used by compare.py)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in args.sizes):
        parser.error("--repeats and --sizes must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("weightinit").setLevel(logging.WARNING)
    progress = Console(stderr=True)
    mm, mm_note = (None, "--no-mmengine: the MMEngine column is skipped.") if args.no_mmengine \
        else load_mmengine()
    if mm_note:
        progress.print(f"[yellow]note:[/] {mm_note}")

    # Warm-up: class creation, rule registry, first calls into torch.
    bench_size(10, mm, 1, Console(stderr=True, quiet=True))
    results = {n: bench_size(n, mm, args.repeats, progress) for n in args.sizes}

    headers = ["N", "plan ms", "plan µs/module", "init ms", "init µs/module", "MMEngine ms",
               "floor ms"]
    rows = [[str(n), fmt_ms(r["plan"]), fmt_us(r["plan"], n), fmt_ms(r["init"]),
             fmt_us(r["init"], n), fmt_ms(r["mmengine"]), fmt_ms(r["floor"])]
            for n, r in results.items()]
    plan_spread, init_spread = spread(results, "plan"), spread(results, "init")
    summary = (f"max/min µs/module across sizes (linear: ≤{LINEAR_TARGET}x): "
               f"plan {verdict(plan_spread)}, init {verdict(init_spread)}")
    notes = [
        f"weightinit {weightinit.__version__} ({Path(weightinit.__file__).parent}), "
        f"torch {torch.__version__}; Python {platform.python_version()} on "
        f"{platform.machine()}, {torch.get_num_threads()} torch thread(s).",
        f"Model: weightinit.ModuleList of N leaves, each a BaseModule with "
        f"init_cfg={LEAF_CFG} holding one nn.Linear(4, 4). Medians of {args.repeats} rounds, "
        "fresh model per measurement, construction not timed; floor = "
        "torch.empty(20 N).normal_(), allocation included.",
    ]
    if mm_note:
        notes.append(mm_note)

    if args.json:
        cases = []
        for n, r in results.items():
            for kind, label in (("plan", "plan"), ("init", "init_weights"),
                                ("mmengine", "MMEngine init_weights (ref)"),
                                ("floor", "floor (ref)")):
                if r[kind] is not None:
                    cases.append({"name": f"N={n}: {label}", "seconds": r[kind]})
        Path(args.json).write_text(json.dumps({
            "benchmark": "planning",
            "weightinit_file": weightinit.__file__,
            "weightinit_version": weightinit.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cases": cases,
            "spread": {"plan": plan_spread, "init": init_spread},
        }, indent=1))

    title = "weightinit.plan() and init_weights() against the number of modules"
    if args.markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---:"] * len(headers)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        print(f"**{title}**\n\n" + "\n".join(lines) + f"\n\n{summary}\n")
        print("\n".join(f"- {note}" for note in notes))
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
        table = Table(title=title)
        for header in headers:
            table.add_column(header, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        console.print(summary, markup=False)
        for note in notes:
            console.print(note, style="dim", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
