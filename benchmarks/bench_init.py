"""Benchmark ``model.init_weights()``: weightinit against MMEngine and a fill floor.

What is measured
----------------
For each bundled example model (``examples/models.py``: ResNet-50, ViT-B/16
and a 48-block transformer of dim 512), and for each of ``--repeats`` rounds:

* **weightinit** — build a fresh model on ``weightinit``'s classes (not
  timed), then time one ``model.init_weights()`` call;
* **MMEngine** — the same model, same ``init_cfg``, built on
  ``mmengine.model.BaseModule``/``Sequential``/``ModuleList`` (not timed),
  then time one ``model.init_weights()`` call. Skipped, with a note, when
  MMEngine cannot be imported;
* **floor** — time ``torch.empty(n).normal_()`` where ``n`` is the model's
  parameter element count. The time includes allocating the tensor (and so
  the first touch of its pages), but not freeing it.

The three are run in a rotating order each round, every timed region is
preceded by ``gc.collect()`` and timed with ``time.perf_counter``, all in one
process with one torch thread count (``--threads``, default: torch's own).
One untimed warm-up round per model comes first (``--warmup``). Reported
times are medians over the rounds. Tensor writes come from
``weightinit.plan(model)``: ``planned_writes`` (what weightinit writes) and
``naive_writes`` (what an eager, write-every-rule run such as MMEngine's
makes).

A second table times filling one preallocated 768x3072 tensor in place with a
truncated normal on [-2, 2] at std=0.02 (bounds 100 std away) and at std=1
(about 4.6 % of normal draws fall outside): ``weightinit.trunc_normal_``,
``torch.nn.init.trunc_normal_``, ``mmengine.model.weight_init.trunc_normal_``
and, as the floor, ``tensor.normal_(0, std)`` in place. Medians over
``--fill-repeats`` calls.

Logging is silenced so that printing is not measured: MMEngine's logger
(``MMLogger.get_current_instance()``, which ``print_log(logger='current')``
and ``BaseModule._dump_init_info`` use) is set to WARNING, which drops its
per-parameter INFO lines; the ``weightinit`` logger is set to WARNING too.

Run from the repository root::

    python benchmarks/bench_init.py              # rich tables
    python benchmarks/bench_init.py --markdown   # Markdown tables
    python benchmarks/bench_init.py --models resnet50 vit_b16 --repeats 9 --threads 1
    python benchmarks/bench_init.py --models vit_b16 --repeats 1 --warmup 0 --json out.json

``--json PATH`` writes the medians (and ``weightinit.__file__``) for
``compare.py``; only public weightinit API is used, so the script runs
against older checkouts too (``PYTHONPATH=<checkout>/src``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table

import weightinit

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_FILE = REPO_ROOT / "examples" / "models.py"

# CLI name -> (display name, builder name in examples/models.py)
MODELS: dict[str, tuple[str, str]] = {
    "resnet50": ("ResNet-50", "resnet50"),
    "vit_b16": ("ViT-B/16", "vit_b16"),
    "transformer": ("Transformer 48x512", "transformer"),
}

FILL_SHAPE = (768, 3072)
FILL_STDS = (0.02, 1.0)

Timer = Callable[[], float]


@dataclass
class ModelResult:
    """Medians (seconds) and write counts for one model."""

    name: str
    params: int
    floor: float
    weightinit: float
    mmengine: float | None
    planned_writes: int
    naive_writes: int


@dataclass
class FillResult:
    """Medians (seconds) of one truncated-normal fill."""

    std: float
    floor: float
    weightinit: float
    torch: float
    mmengine: float | None


@dataclass
class MMEngine:
    """What the benchmark needs from MMEngine, when it is importable."""

    kit: SimpleNamespace
    trunc_normal_: Callable[..., torch.Tensor]
    version: str


def load_models() -> ModuleType:
    """Import ``examples/models.py`` (not a package) by path."""
    spec = importlib.util.spec_from_file_location("weightinit_example_models", MODELS_FILE)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the example models from {MODELS_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_mmengine() -> tuple[MMEngine | None, str | None]:
    """MMEngine's classes and ``trunc_normal_`` with its logger silenced, or a note why not."""
    try:
        import mmengine
        from mmengine.logging import MMLogger
        from mmengine.model import BaseModule, ModuleList, Sequential
        from mmengine.model.weight_init import trunc_normal_
    except ImportError as exc:
        return None, f"MMEngine is not importable ({exc}): its columns are skipped."
    # init_weights() logs every parameter at INFO through the current MMLogger
    # (print_log(logger='current') and _dump_init_info); WARNING drops those.
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    kit = SimpleNamespace(BaseModule=BaseModule, Sequential=Sequential, ModuleList=ModuleList)
    return MMEngine(kit, trunc_normal_, mmengine.__version__), None


def write_json(path: str, benchmark: str, cases: Sequence[dict[str, Any]],
               **extra: Any) -> None:
    """The machine-readable result ``compare.py`` reads: medians per case, and which
    weightinit was imported (``weightinit_file``). Cases whose name ends in ``(ref)`` do
    not run weightinit code (floors, MMEngine) and show how noisy a comparison is."""
    Path(path).write_text(json.dumps({
        "benchmark": benchmark,
        "weightinit_file": weightinit.__file__,
        "weightinit_version": weightinit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cases": list(cases),
        **extra,
    }, indent=1))


def weightinit_kit() -> SimpleNamespace:
    return SimpleNamespace(BaseModule=weightinit.BaseModule, Sequential=weightinit.Sequential,
                           ModuleList=weightinit.ModuleList)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes, after a ``gc.collect()``; its result is freed after."""
    gc.collect()
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def time_init_weights(build: Callable[[], nn.Module]) -> float:
    """Build a fresh model (not timed), then time its ``init_weights()``."""
    model = build()
    elapsed = timed(model.init_weights)
    del model
    return elapsed


def rounds(timers: dict[str, Callable[[], float]], repeats: int, warmup: int, label: str,
           log: Console) -> dict[str, float]:
    """Run every timer once per round in a rotating order; medians of the timed rounds."""
    times: dict[str, list[float]] = {name: [] for name in timers}
    order = list(timers)
    for r in range(warmup + repeats):
        shift = r % len(order)
        for name in order[shift:] + order[:shift]:
            elapsed = timers[name]()
            if r >= warmup:
                times[name].append(elapsed)
        what = "warm-up" if r < warmup else f"round {r - warmup + 1}/{repeats}"
        log.log(f"{label}: {what} " + " ".join(
            f"{n}={t[-1] * 1e3:.1f}ms" for n, t in times.items() if t))
    return {name: statistics.median(values) for name, values in times.items()}


def bench_model(key: str, models: ModuleType, mm: MMEngine | None, repeats: int, warmup: int,
                console: Console) -> ModelResult:
    """Median init_weights() times of one model under weightinit and MMEngine, and its floor."""
    display, builder_name = MODELS[key]
    builder: Callable[..., nn.Module] = getattr(models, builder_name)
    wi_kit = weightinit_kit()

    probe = builder(wi_kit)
    numel = sum(p.numel() for p in probe.parameters())
    planned = weightinit.plan(probe)
    planned_writes, naive_writes = planned.planned_writes, planned.naive_writes
    del probe, planned

    timers: dict[str, Timer] = {
        "weightinit": lambda: time_init_weights(lambda: builder(wi_kit)),
        "floor": lambda: timed(lambda: torch.empty(numel).normal_()),
    }
    if mm is not None:
        mm_kit = mm.kit
        timers["mmengine"] = lambda: time_init_weights(lambda: builder(mm_kit))

    med = rounds(timers, repeats, warmup, display, console)
    return ModelResult(display, numel, med["floor"], med["weightinit"], med.get("mmengine"),
                       planned_writes, naive_writes)


def bench_fill(std: float, mm: MMEngine | None, repeats: int) -> FillResult:
    """Median in-place fill times of one preallocated FILL_SHAPE tensor with N(0, std²) on [-2, 2]."""
    tensor = torch.empty(FILL_SHAPE)
    tensor.normal_()  # touch the pages once, outside the timed regions
    fills: dict[str, Callable[[], Any]] = {
        "floor": lambda: tensor.normal_(0.0, std),
        "weightinit": lambda: weightinit.trunc_normal_(tensor, std=std, a=-2.0, b=2.0),
        "torch": lambda: torch.nn.init.trunc_normal_(tensor, std=std, a=-2.0, b=2.0),
    }
    if mm is not None:
        mm_trunc = mm.trunc_normal_
        fills["mmengine"] = lambda: mm_trunc(tensor, std=std, a=-2.0, b=2.0)
    times: dict[str, list[float]] = {name: [] for name in fills}
    for name, fill in fills.items():
        fill()  # warm-up
        for _ in range(repeats):
            times[name].append(timed(fill))
    med = {name: statistics.median(values) for name, values in times.items()}
    return FillResult(std, med["floor"], med["weightinit"], med["torch"], med.get("mmengine"))


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f}"


def ratio(num: float | None, den: float | None) -> str:
    return "n/a" if num is None or den is None else f"{num / den:.2f}x"


def model_rows(results: Sequence[ModelResult]) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "params (M)", "floor ms", "weightinit ms", "MMEngine ms",
               "weightinit/floor", "MMEngine/floor", "MMEngine/weightinit",
               "writes planned / eager"]
    rows = [[r.name, f"{r.params / 1e6:.1f}", ms(r.floor), ms(r.weightinit), ms(r.mmengine),
             ratio(r.weightinit, r.floor), ratio(r.mmengine, r.floor),
             ratio(r.mmengine, r.weightinit), f"{r.planned_writes} / {r.naive_writes}"]
            for r in results]
    return headers, rows


def fill_rows(results: Sequence[FillResult]) -> tuple[list[str], list[list[str]]]:
    headers = ["trunc_normal_ 768x3072", "floor normal_ ms", "weightinit ms", "torch ms",
               "MMEngine ms", "weightinit/floor", "torch/floor", "MMEngine/floor"]
    rows = [[f"std={r.std:g}, [-2, 2]", ms(r.floor), ms(r.weightinit), ms(r.torch),
             ms(r.mmengine), ratio(r.weightinit, r.floor), ratio(r.torch, r.floor),
             ratio(r.mmengine, r.floor)]
            for r in results]
    return headers, rows


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, first column left-aligned, the others right."""
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rich_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="models to run (default: all)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds per model; medians are reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds per model before the timed ones (default: 1)")
    parser.add_argument("--fill-repeats", type=int, default=30,
                        help="timed calls per trunc_normal_ fill (default: 30)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for everything (default: torch's default)")
    parser.add_argument("--no-mmengine", action="store_true",
                        help="skip MMEngine even when it is importable")
    parser.add_argument("--markdown", action="store_true",
                        help="print the tables as Markdown instead of rich tables")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the medians as JSON to PATH (read by compare.py)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.fill_repeats < 1 or args.warmup < 0:
        parser.error("--repeats and --fill-repeats must be >= 1, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("weightinit").setLevel(logging.WARNING)
    progress = Console(stderr=True)

    models = load_models()
    mm, mm_note = ((None, "--no-mmengine: the MMEngine columns are skipped.")
                   if args.no_mmengine else load_mmengine())
    if mm_note:
        progress.print(f"[yellow]note:[/] {mm_note}")

    results = [bench_model(key, models, mm, args.repeats, args.warmup, progress)
               for key in args.models]
    progress.log("trunc_normal_ fills")
    fills = [bench_fill(std, mm, args.fill_repeats) for std in FILL_STDS]

    notes = [
        f"torch {torch.__version__}, weightinit {weightinit.__version__}, "
        + (f"MMEngine {mm.version}" if mm else "MMEngine: not installed")
        + f"; Python {platform.python_version()} on {platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s).",
        f"Model times: medians of {args.repeats} rounds (after {args.warmup} warm-up), "
        "fresh model each round, construction not timed; floor = torch.empty(n).normal_() "
        "for the model's n parameter elements, allocation included.",
        f"Fill times: medians of {args.fill_repeats} in-place fills of one preallocated "
        f"{FILL_SHAPE[0]}x{FILL_SHAPE[1]} float32 tensor; floor = tensor.normal_(0, std).",
    ]
    if mm_note:
        notes.append(mm_note)

    if args.json:
        cases: list[dict[str, Any]] = []
        for r in results:
            cases += [{"name": f"{r.name}: init_weights", "seconds": r.weightinit},
                      {"name": f"{r.name}: MMEngine init_weights (ref)", "seconds": r.mmengine},
                      {"name": f"{r.name}: floor (ref)", "seconds": r.floor}]
        for f in fills:
            what = f"trunc_normal_ std={f.std:g}"
            cases += [{"name": f"{what}: weightinit", "seconds": f.weightinit},
                      {"name": f"{what}: torch (ref)", "seconds": f.torch},
                      {"name": f"{what}: MMEngine (ref)", "seconds": f.mmengine},
                      {"name": f"{what}: floor normal_ (ref)", "seconds": f.floor}]
        write_json(args.json, "init", [c for c in cases if c["seconds"] is not None])

    tables = [("init_weights()", *model_rows(results)),
              ("trunc_normal_ on [-2, 2]", *fill_rows(fills))]
    if args.markdown:
        for title, headers, rows in tables:
            print(f"**{title}**\n\n{markdown_table(headers, rows)}\n")
        print("\n".join(f"- {note}" for note in notes))
    else:
        console = Console()
        if not console.is_terminal:  # piped: don't squeeze the tables into 80 columns
            console = Console(width=200)
        for title, headers, rows in tables:
            console.print(rich_table(title, headers, rows))
        for note in notes:
            console.print(note, style="dim")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
