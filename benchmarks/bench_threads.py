"""Benchmark CPU initialization against the one-``normal_()`` floor, with 1 and N threads.

What is measured (issue 16, "use every core")
---------------------------------------------
**init_weights()** — for ResNet-50, ViT-B/16 and the 48-block d=512
transformer of ``examples/models.py``, each round builds a fresh model on
weightinit's classes (eager, not timed) and times ``model.init_weights()``
with ``torch.set_num_threads(t)`` for each ``t`` of ``--threads`` (default
1 and all cores), and ``init_weights(seed=0)`` at the largest ``t``. The
**floor** is one ``normal_()`` over a pre-allocated, already-touched
float32 buffer with as many elements as the model has parameters (the cost
of drawing the numbers once, nothing else). Targets (issue 16, at the
largest thread count): ≤ 0.75x the floor on ViT-B/16 and the transformer,
≤ 1.0x on ResNet-50.

**deferred** — ``with weightinit.deferred(): model = build()`` then
``model.init_weights()`` (allocation and one write per tensor), timed
together, against "allocate + one ``normal_()``":
``torch.empty(n).normal_()``. Target: ≤ 0.9x.

**construction** — building the bundled Llama (``--construction-sizes``,
default ``tiny`` and ``1b``) eagerly (allocation and PyTorch's default init
included) and under ``weightinit.deferred()`` (every op through a
``TorchFunctionMode``, nothing allocated), per module (models under 10 M
parameters are built 50 times per round, and the time of one reported). ``--profile`` also
prints the top of a cProfile of one deferred construction of the last size.

Every timed region follows a ``gc.collect()`` and is timed with
``time.perf_counter``; the kinds run in a rotating order from round to
round, after ``--warmup`` untimed rounds, and the tables give medians over
``--repeats`` rounds. Threads are restored after each measurement. The
machine should be otherwise idle: other processes on the same cores make
the multi-thread columns meaningless.

Run from the repository root::

    python benchmarks/bench_threads.py                      # rich tables
    python benchmarks/bench_threads.py --markdown --repeats 9
    python benchmarks/bench_threads.py --models vit_b16 --threads 1 2 4 --skip deferred
    WEIGHTINIT_NUM_THREADS=1 python benchmarks/bench_threads.py   # weightinit's threads off
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import platform
import pstats
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from bench_init import (
    load_models,
    markdown_table,
    ms,
    rich_table,
    rounds,
    weightinit_kit,
    write_json,
)
from rich.console import Console

import weightinit

MODELS = {"resnet50": "ResNet-50", "vit_b16": "ViT-B/16", "transformer": "Transformer 48x512"}
INIT_TARGETS = {"resnet50": 1.0, "vit_b16": 0.75, "transformer": 0.75}
DEFERRED_TARGET = 0.9
SECTIONS = ("init", "deferred", "construction")


@dataclass
class Row:
    key: str
    params: int
    times: dict[str, float] = field(default_factory=dict)  # medians, seconds


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def with_threads(n: int, fn: Callable[[], Any]) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def bench_init(key: str, models: Any, threads: Sequence[int], repeats: int, warmup: int,
               log: Console) -> Row:
    build: Callable[[], nn.Module] = lambda: getattr(models, key)(weightinit_kit())  # noqa: E731
    probe = build()
    n = sum(p.numel() for p in probe.parameters())
    del probe
    buffer = torch.empty(n)
    buffer.normal_()  # touched once: the floor draws only

    def init(t: int, seed: int | None) -> float:
        model = build()
        return with_threads(t, lambda: timed(lambda: model.init_weights(seed=seed)))[0]

    timers: dict[str, Callable[[], float]] = {"floor": lambda: timed(buffer.normal_)[0]}
    for t in threads:
        timers[f"{t}t"] = lambda t=t: init(t, None)
    timers[f"seeded {max(threads)}t"] = lambda: init(max(threads), 0)
    return Row(key, n, rounds(timers, repeats, warmup, MODELS[key], log))


def bench_deferred(key: str, models: Any, threads: Sequence[int], repeats: int, warmup: int,
                   log: Console) -> Row:
    builder = getattr(models, key)
    with weightinit.deferred():
        probe = builder(weightinit_kit())
    n = sum(p.numel() for p in probe.parameters())
    del probe

    def deferred(t: int) -> float:
        def run() -> nn.Module:
            with weightinit.deferred():
                model = builder(weightinit_kit())
            model.init_weights()
            return model
        elapsed, model = with_threads(t, lambda: timed(run))
        del model
        return elapsed

    def floor() -> float:
        elapsed, out = timed(lambda: torch.empty(n).normal_())
        del out
        return elapsed

    timers: dict[str, Callable[[], float]] = {"alloc+normal_": floor}
    for t in threads:
        timers[f"{t}t"] = lambda t=t: deferred(t)
    return Row(key, n, rounds(timers, repeats, warmup, f"deferred {MODELS[key]}", log))


def bench_construction(size: str, models: Any, repeats: int, warmup: int,
                       log: Console) -> Row:
    build = lambda: models.llama(weightinit_kit(), size=size)  # noqa: E731
    with weightinit.deferred():
        probe = build()
    count = sum(1 for _ in probe.modules())
    n = sum(p.numel() for p in probe.parameters())
    del probe

    inner = 1 if n > 10_000_000 else 50  # small models: time 50 builds, report one

    def eager() -> float:
        elapsed, models_ = timed(lambda: [build() for _ in range(inner)])
        del models_
        return elapsed / inner

    def deferred() -> float:
        def run() -> list[nn.Module]:
            out = []
            for _ in range(inner):
                with weightinit.deferred():
                    out.append(build())
            return out
        elapsed, models_ = timed(run)
        del models_
        return elapsed / inner

    row = Row(f"llama {size}", n, rounds({"eager": eager, "deferred": deferred}, repeats,
                                         warmup, f"construction llama {size}", log))
    row.times["modules"] = count
    return row


def profile_construction(size: str, models: Any, top: int) -> str:
    build = lambda: models.llama(weightinit_kit(), size=size)  # noqa: E731
    prof = cProfile.Profile()
    prof.enable()
    with weightinit.deferred():
        model = build()
    prof.disable()
    del model
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}x"


def mark(value: float, target: float) -> str:
    return f"{value:.2f}x {'✓' if value <= target else '✗'} (≤ {target:g})"


def init_table(rows: Sequence[Row], threads: Sequence[int]) -> tuple[list[str], list[list[str]]]:
    top = max(threads)
    headers = ["model", "params (M)", "floor ms"]
    headers += [f"{t} thread{'s' * (t > 1)} ms" for t in threads]
    headers += [f"seeded {top}t ms"] + [f"{t}t/floor" for t in threads]
    headers += [f"seeded {top}t/floor", "target"]
    body = []
    for r in rows:
        floor = r.times["floor"]
        cells = [MODELS[r.key], f"{r.params / 1e6:.1f}", ms(floor)]
        cells += [ms(r.times[f"{t}t"]) for t in threads] + [ms(r.times[f"seeded {top}t"])]
        cells += [ratio(r.times[f"{t}t"], floor) for t in threads]
        cells += [ratio(r.times[f"seeded {top}t"], floor),
                  mark(r.times[f"{top}t"] / floor, INIT_TARGETS[r.key])]
        body.append(cells)
    return headers, body


def deferred_table(rows: Sequence[Row], threads: Sequence[int]
                   ) -> tuple[list[str], list[list[str]]]:
    top = max(threads)
    headers = ["model", "params (M)", "alloc + normal_ ms"]
    headers += [f"deferred {t}t ms" for t in threads] + [f"{t}t/floor" for t in threads]
    headers += ["target"]
    body = []
    for r in rows:
        floor = r.times["alloc+normal_"]
        cells = [MODELS[r.key], f"{r.params / 1e6:.1f}", ms(floor)]
        cells += [ms(r.times[f"{t}t"]) for t in threads]
        cells += [ratio(r.times[f"{t}t"], floor) for t in threads]
        cells.append(mark(r.times[f"{top}t"] / floor, DEFERRED_TARGET))
        body.append(cells)
    return headers, body


def construction_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "params (M)", "modules", "eager ms", "eager µs/module", "deferred ms",
               "deferred µs/module", "deferred/eager"]
    body = []
    for r in rows:
        count = r.times["modules"]
        eager, deferred = r.times["eager"], r.times["deferred"]
        body.append([r.key, f"{r.params / 1e6:.1f}", f"{count:.0f}", ms(eager),
                     f"{eager / count * 1e6:.1f}", ms(deferred),
                     f"{deferred / count * 1e6:.1f}", ratio(deferred, eager)])
    return headers, body


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=None,
                        help="thread counts to compare (default: 1 and torch's default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default: 1)")
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[],
                        help="sections to leave out")
    parser.add_argument("--construction-sizes", nargs="+", default=["tiny", "1b"],
                        help="llama sizes for the construction table (default: tiny 1b)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the top N functions of a cProfile of one deferred "
                             "construction (last size)")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is None:
        args.threads = sorted({1, torch.get_num_threads()})
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("weightinit").setLevel(logging.WARNING)
    log = Console(stderr=True, soft_wrap=True, width=200)
    models = load_models()
    threads = sorted(set(args.threads))
    init_rows = [] if "init" in args.skip else [
        bench_init(k, models, threads, args.repeats, args.warmup, log) for k in args.models]
    deferred_rows = [] if "deferred" in args.skip else [
        bench_deferred(k, models, threads, args.repeats, args.warmup, log) for k in args.models]
    construction_rows = [] if "construction" in args.skip else [
        bench_construction(s, models, args.repeats, args.warmup, log)
        for s in args.construction_sizes]

    tables = []
    if init_rows:
        tables.append(("init_weights() against one normal_() over a touched buffer",
                       *init_table(init_rows, threads)))
    if deferred_rows:
        tables.append(("deferred build + init_weights() against torch.empty(n).normal_()",
                       *deferred_table(deferred_rows, threads)))
    if construction_rows:
        tables.append(("construction: eager against deferred()",
                       *construction_table(construction_rows)))
    notes = [f"torch {torch.__version__}, weightinit {weightinit.__version__}, Python "
             f"{platform.python_version()} on {platform.machine()}; medians of {args.repeats} "
             f"rounds after {args.warmup} warm-up; threads compared: {threads}."]
    if args.json:
        cases = [{"name": f"{MODELS[r.key]}: {k}", "seconds": v}
                 for r in init_rows for k, v in r.times.items()]
        cases += [{"name": f"deferred {MODELS[r.key]}: {k}", "seconds": v}
                  for r in deferred_rows for k, v in r.times.items()]
        cases += [{"name": f"construction {r.key}: {k}", "seconds": v}
                  for r in construction_rows for k, v in r.times.items() if k != "modules"]
        write_json(args.json, "threads", cases)
    if args.markdown:
        for title, headers, rows in tables:
            print(f"**{title}**\n\n{markdown_table(headers, rows)}\n")
        print("\n".join(f"- {note}" for note in notes))
    else:
        console = Console() if Console().is_terminal else Console(width=220)
        for title, headers, rows in tables:
            console.print(rich_table(title, headers, rows))
        for note in notes:
            console.print(note, style="dim")
    if args.profile and args.construction_sizes:
        print(profile_construction(args.construction_sizes[-1], models, args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
