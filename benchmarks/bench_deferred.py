"""Benchmark deferred construction: build on ``meta`` + ``init_weights()`` against eager init.

``--hf`` runs the Hugging Face and timm table instead (``bench_deferred_hf.py``: their own
eager construction against deferred + seeded and unseeded init, and the floor).

What is measured
----------------
For each model (``examples/models.py``: ViT-B/16, a 48-block transformer of
dim 512 and a Llama-style 1B decoder) and each of ``--repeats`` rounds
(``--repeats-large`` for models over 1 G parameters), timed from before
construction to after initialization:

* **eager** (``(a)``): build the model eagerly, so every parameter is
  allocated and written by its constructor's default init, then call
  ``model.init_weights()``. The model is built on MMEngine's
  ``BaseModule``/``Sequential``/``ModuleList`` when MMEngine is importable
  (``--eager auto``, the default), otherwise on weightinit's own classes
  (labelled "eager weightinit"). MMEngine's per-parameter INFO logging is
  silenced, as in ``bench_init.py``.
* **deferred** (``(b)``): ``with weightinit.deferred(): model = build()``
  (parameters on ``meta``, constructor init recorded, not run), then
  ``model.init_weights()`` (``init_weights(device=..., dtype=...)`` with
  ``--device``/``--dtype``), which allocates every tensor once and writes
  every parameter once.
* **floor** (``(c)``): ``torch.empty(n).normal_()`` for the model's ``n``
  parameter elements, allocation included.
* **match_eager** (with ``--match-eager``): as deferred, built under
  ``weightinit.deferred(match_eager=True)``, which also draws the constructor
  inits of the tensors rules overwrite (into scratch), as eager construction
  does, so unseeded values equal eager ones.

Every single measurement runs in a fresh Python process (this script,
re-run with a hidden ``--worker`` flag), so each one starts from the same
state and its peak memory is its own. The worker imports what it needs, runs
the same measurement once on a tiny configuration of the same model (to pay
first-call costs outside the timed region), runs ``gc.collect()``, reads its
current resident set size (``/proc/self/statm``) as the baseline, then runs
the timed region (``time.perf_counter``) and reads its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux). The tables
report medians over the rounds of the time and of (peak - baseline) /
parameter bytes. The three measurements run in a rotating order each round.

With ``--device cuda`` the same three are measured on the GPU, each ending
with ``torch.cuda.synchronize()`` inside the timed region:

* **eager CPU init + .cuda()**: eager construction and ``init_weights()`` on
  the CPU, then ``.cuda()`` (what an MMEngine user does). It runs on MMEngine
  if importable, else on weightinit's own classes with weightinit's
  ``init_weights()`` — the label says which;
* **deferred**: ``init_weights(device='cuda')`` after deferred construction;
* **floor**: ``torch.empty(n, device='cuda').normal_()``.

GPU peak memory is ``torch.cuda.max_memory_allocated()`` minus what was
allocated before the timed region (after ``reset_peak_memory_stats()``); the
host RSS growth is reported too. A model that does not fit, or any other
failure, is reported in the table and the notes instead of stopping the run.

The targets shown next to the ratios (a check mark when met): deferred <=
1.2x floor, deferred at least 2.5x faster than eager, deferred peak <= 1.15x
the parameter bytes. The ``eager/floor`` column is the speed-up an
implementation running exactly at the floor would get: where it is below
2.5x, the speed-up target cannot be met without beating the floor.

Run from the repository root::

    python benchmarks/bench_deferred.py                     # rich tables
    python benchmarks/bench_deferred.py --markdown          # Markdown tables
    python benchmarks/bench_deferred.py --models vit_b16 --repeats 9 --threads 1
    python benchmarks/bench_deferred.py --device cuda --markdown
    python benchmarks/bench_deferred.py --tiny --repeats 1 --json out.json   # a quick check

``--tiny`` measures the small warm-up configurations instead of the full
models (a smoke run; the numbers mean little). ``--json PATH`` writes the
medians, and the ``weightinit.__file__`` every worker imported, for
``compare.py``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
from bench_init import (
    load_mmengine,
    load_models,
    markdown_table,
    ms,
    rich_table,
    weightinit_kit,
    write_json,
)
from rich.console import Console

import weightinit

SCRIPT = Path(__file__).resolve()
RESULT_TAG = "BENCH_DEFERRED_RESULT "
LARGE_PARAMS = 1_000_000_000  # models above this many parameters use --repeats-large

# Targets from the issue: deferred/floor, eager/deferred, deferred peak / parameter bytes.
TARGET_FLOOR_RATIO = 1.2
TARGET_SPEEDUP = 2.5
TARGET_PEAK_RATIO = 1.15


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: a builder of ``examples/models.py`` and its arguments."""

    display: str
    builder: str
    kwargs: dict[str, Any]
    tiny_kwargs: dict[str, Any]  # a small configuration of the same model, for the warm-up


MODELS: dict[str, ModelSpec] = {
    "vit_b16": ModelSpec("ViT-B/16", "vit_b16", {}, {"depth": 1, "num_classes": 10}),
    "transformer": ModelSpec("Transformer 48x512", "transformer", {}, {"depth": 1, "dim": 64}),
    "llama_1b": ModelSpec("Llama 1B", "llama", {"size": "1b"}, {"size": "tiny"}),
}

KINDS = ("eager", "deferred", "floor")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- the worker: one measurement in a fresh process --------------------------------------------

def current_rss_kib() -> int:
    """Resident set size now, in KiB (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return peak_rss_kib()


def peak_rss_kib() -> int:
    """Peak resident set size of this process, in KiB (``ru_maxrss`` is bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def eager_kit(which: str) -> SimpleNamespace:
    """The classes the eager path builds on: MMEngine's (logging silenced) or weightinit's."""
    if which == "mmengine":
        mm, note = load_mmengine()
        if mm is None:
            raise RuntimeError(note)
        return mm.kit
    return weightinit_kit()


def make_measurement(kind: str, eager: str, build: Callable[[SimpleNamespace], nn.Module],
                     numel: int, device: torch.device,
                     dtype: torch.dtype | None) -> Callable[[], Any]:
    """The timed function of one kind: ``build(kit)`` makes the model, ``numel`` sizes the floor."""
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if kind == "floor":
        def floor() -> Any:
            out = torch.empty(numel, device=device, dtype=dtype or torch.float32).normal_()
            sync()
            return out
        return floor

    if kind in ("deferred", "match_eager"):
        kit = weightinit_kit()

        def deferred() -> Any:
            with weightinit.deferred(match_eager=kind == "match_eager"):
                model = build(kit)
            if cuda or dtype is not None:
                model.init_weights(device=device, dtype=dtype)
            else:
                model.init_weights()  # materializes on the CPU in the declared dtype
            sync()
            return model
        return deferred

    kit = eager_kit(eager)

    def eager_init() -> Any:
        model = build(kit)
        model.init_weights()
        if cuda or dtype is not None:
            model.to(device=device, dtype=dtype)
        sync()
        return model
    return eager_init


def check_model(model: Any, device: torch.device, dtype: torch.dtype | None) -> int:
    """Parameter elements of the result; raises if a tensor is not where it should be."""
    if isinstance(model, torch.Tensor):
        return model.numel()
    n = 0
    for name, p in model.named_parameters():
        if p.device.type != device.type:
            raise RuntimeError(f"{name} is on {p.device}, not {device}")
        if dtype is not None and p.dtype != dtype:
            raise RuntimeError(f"{name} is {p.dtype}, not {dtype}")
        n += p.numel()
    return n


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, as described in the module docstring. Returns a JSON-able dict."""
    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    logging.getLogger("weightinit").setLevel(logging.WARNING)
    device = torch.device(spec["device"])
    dtype = DTYPES[spec["dtype"]] if spec["dtype"] else None
    cuda = device.type == "cuda"
    model_spec = MODELS[spec["model"]]
    models = load_models()
    builder: Callable[..., nn.Module] = getattr(models, model_spec.builder)
    if cuda:
        torch.cuda.init()
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)

    def timed_run(kwargs: dict[str, Any], n: int) -> Callable[[], Any]:
        return make_measurement(spec["kind"], spec["eager"], lambda kit: builder(kit, **kwargs),
                                n, device, dtype)

    # Warm-up on a tiny configuration of the same model: imports, class creation,
    # first-call costs (CUDA context, RNG, allocator) stay out of the timed region.
    with weightinit.deferred():
        tiny = builder(weightinit_kit(), **model_spec.tiny_kwargs)
    tiny_n = sum(p.numel() for p in tiny.parameters())
    del tiny
    warm = timed_run(model_spec.tiny_kwargs, tiny_n)()
    del warm
    run = timed_run(model_spec.tiny_kwargs if spec.get("tiny") else model_spec.kwargs,
                    spec["numel"])

    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    gpu_base = torch.cuda.memory_allocated(device) if cuda else 0
    rss_base = current_rss_kib()
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    rss_peak = peak_rss_kib()
    gpu_peak = torch.cuda.max_memory_allocated(device) if cuda else 0
    result = {
        "seconds": seconds,
        "host_peak_bytes": (rss_peak - rss_base) * 1024,
        "gpu_peak_bytes": gpu_peak - gpu_base if cuda else None,
        "numel": check_model(out, device, dtype),
        "weightinit_file": weightinit.__file__,
    }
    del out
    return result


def worker_main(raw: str) -> int:
    spec = json.loads(raw)
    try:
        result = run_worker(spec)
    except Exception as exc:  # reported to the parent, which keeps going
        text = f"{type(exc).__name__}: {exc}"
        result = {"error": text if len(text) < 400 else text[:397] + "..."}
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# -- the parent: rounds of workers, medians, tables ----------------------------------------------

@dataclass
class Series:
    """The measurements of one kind on one model."""

    seconds: list[float] = field(default_factory=list)
    host_peak: list[int] = field(default_factory=list)
    gpu_peak: list[int] = field(default_factory=list)
    error: str | None = None
    files: set[str] = field(default_factory=set)  # weightinit.__file__ in the workers

    def median(self, values: Sequence[float]) -> float | None:
        return statistics.median(values) if values and self.error is None else None

    @property
    def time(self) -> float | None:
        return self.median(self.seconds)

    @property
    def host(self) -> float | None:
        return self.median(self.host_peak)

    @property
    def gpu(self) -> float | None:
        return self.median(self.gpu_peak)


@dataclass
class ModelResult:
    name: str
    params: int
    param_bytes: int
    series: dict[str, Series]


def spawn(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh process; its result dict, or ``{'error': ...}``."""
    cmd = [sys.executable, str(SCRIPT), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit {proc.returncode}"
    return {"error": f"worker {why}: {' | '.join(tail)[:300]}"}


def model_size(models: ModuleType, spec: ModelSpec, dtype: torch.dtype | None,
               tiny: bool = False) -> tuple[int, int]:
    """Parameter elements and bytes (in ``dtype``, else as declared), from a meta build."""
    with weightinit.deferred():
        model = getattr(models, spec.builder)(weightinit_kit(),
                                              **(spec.tiny_kwargs if tiny else spec.kwargs))
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    itemsize = None if dtype is None else torch.finfo(dtype).bits // 8
    nbytes = sum(p.numel() * (itemsize or p.element_size()) for p in params)
    return numel, nbytes


def bench_model(key: str, models: ModuleType, args: argparse.Namespace,
                console: Console) -> ModelResult:
    spec = MODELS[key]
    dtype = DTYPES[args.dtype] if args.dtype else None
    numel, nbytes = model_size(models, spec, dtype, args.tiny)
    repeats = args.repeats_large if numel > LARGE_PARAMS else args.repeats
    kinds = KINDS + ("match_eager",) if args.match_eager else KINDS
    series = {kind: Series() for kind in kinds}
    for r in range(repeats):
        shift = r % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            s = series[kind]
            if s.error is not None:
                continue  # failed once (e.g. does not fit): don't try again
            out = spawn({"kind": kind, "model": key, "device": args.device, "dtype": args.dtype,
                         "eager": args.eager, "threads": args.threads, "numel": numel,
                         "tiny": args.tiny},
                        args.timeout)
            if "error" in out:
                s.error = out["error"]
                console.log(f"[red]{spec.display}: {kind} failed:[/] {s.error}")
                continue
            if out["numel"] != numel:
                s.error = f"built {out['numel']} parameter elements, expected {numel}"
                continue
            s.seconds.append(out["seconds"])
            s.files.add(out["weightinit_file"])
            s.host_peak.append(out["host_peak_bytes"])
            if out["gpu_peak_bytes"] is not None:
                s.gpu_peak.append(out["gpu_peak_bytes"])
        console.log(f"{spec.display}: round {r + 1}/{repeats} " + " ".join(
            f"{k}={'failed' if s.error else f'{s.seconds[-1] * 1e3:.0f}ms'}"
            for k, s in series.items() if s.error or s.seconds))
    display = f"{spec.display} (tiny)" if args.tiny else spec.display
    return ModelResult(display, numel, nbytes, series)


def fmt_ratio(num: float | None, den: float | None, target: float | None = None,
              at_most: bool = True) -> str:
    """``num/den`` as ``1.23x``, with a check mark against ``target`` when given."""
    if num is None or den is None or den == 0:
        return "n/a"
    value = num / den
    text = f"{value:.2f}x"
    if target is None:
        return text
    met = value <= target if at_most else value >= target
    return f"{text} {'✓' if met else '✗'}"


def cell_ms(s: Series) -> str:
    return "failed" if s.error else ms(s.time)


def result_rows(results: Sequence[ModelResult], cuda: bool, eager_label: str
                ) -> tuple[list[str], list[list[str]]]:
    short = "eager" if cuda else eager_label
    headers = ["model", "params (M)", "param GB", "floor ms", "deferred ms", f"{eager_label} ms",
               f"deferred/floor (≤{TARGET_FLOOR_RATIO}x)",
               f"{short}/deferred (≥{TARGET_SPEEDUP}x)", f"{short}/floor (speed-up ceiling)",
               f"deferred {'GPU ' if cuda else ''}peak/param (≤{TARGET_PEAK_RATIO}x)",
               f"{short} {'GPU ' if cuda else ''}peak/param"]
    if cuda:
        headers += ["deferred host peak/param", "eager host peak/param"]
    rows = []
    for r in results:
        e, d, f = r.series["eager"], r.series["deferred"], r.series["floor"]
        peak_d, peak_e = (d.gpu, e.gpu) if cuda else (d.host, e.host)
        row = [r.name, f"{r.params / 1e6:.1f}", f"{r.param_bytes / 1e9:.2f}", cell_ms(f),
               cell_ms(d), cell_ms(e),
               fmt_ratio(d.time, f.time, TARGET_FLOOR_RATIO),
               fmt_ratio(e.time, d.time, TARGET_SPEEDUP, at_most=False),
               fmt_ratio(e.time, f.time),
               fmt_ratio(peak_d, r.param_bytes, TARGET_PEAK_RATIO),
               fmt_ratio(peak_e, r.param_bytes)]
        if cuda:
            row += [fmt_ratio(d.host, r.param_bytes), fmt_ratio(e.host, r.param_bytes)]
        x = r.series.get("match_eager")
        if x is not None:
            row += [cell_ms(x), fmt_ratio(x.time, d.time), fmt_ratio(x.time, e.time),
                    fmt_ratio(x.gpu if cuda else x.host, r.param_bytes)]
        rows.append(row)
    if any("match_eager" in r.series for r in results):
        headers += ["match_eager ms", "match_eager/deferred", f"match_eager/{short}",
                    "match_eager peak/param"]
    return headers, rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="models to run (default: all)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds per model; medians are reported (default: 5)")
    parser.add_argument("--repeats-large", type=int, default=3,
                        help=f"rounds for models over {LARGE_PARAMS / 1e9:g} G parameters "
                             "(default: 3)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where to materialize (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES),
                        help="materialize in this dtype; the eager path converts after init "
                             "(default: as declared, float32)")
    parser.add_argument("--eager", default="auto", choices=["auto", "mmengine", "weightinit"],
                        help="classes the eager path builds on (default: MMEngine if importable)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads in every worker (default: torch's default)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds before one measurement is given up (default: 900)")
    parser.add_argument("--match-eager", action="store_true",
                        help="also measure deferred(match_eager=True), which draws the inits "
                             "of rule-covered tensors into scratch as eager construction does")
    parser.add_argument("--tiny", action="store_true",
                        help="measure the small warm-up configurations (a smoke run)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table as Markdown instead of a rich table")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the medians as JSON to PATH (read by compare.py)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.repeats_large < 1:
        parser.error("--repeats and --repeats-large must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--hf" in argv:  # the Hugging Face and timm table (bench_deferred_hf.py)
        sys.path.insert(0, str(SCRIPT.parent))
        import bench_deferred_hf

        return bench_deferred_hf.main([a for a in argv if a != "--hf"])
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    progress = Console(stderr=True)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        progress.print("[red]error:[/] --device cuda, but torch.cuda.is_available() is False "
                       f"(torch {torch.__version__}).")
        return 2

    has_mmengine = importlib.util.find_spec("mmengine") is not None
    if args.eager == "auto":
        args.eager = "mmengine" if has_mmengine else "weightinit"
    elif args.eager == "mmengine" and not has_mmengine:
        progress.print("[red]error:[/] --eager mmengine, but MMEngine is not importable.")
        return 2
    kit_name = "MMEngine" if args.eager == "mmengine" else "eager weightinit"
    eager_label = (f"{'MMEngine' if args.eager == 'mmengine' else 'eager'} CPU init + .cuda()"
                   if cuda else kit_name)

    models = load_models()
    results = [bench_model(key, models, args, progress) for key in args.models]

    threads = args.threads or torch.get_num_threads()
    floor_args = (", device='cuda'" if cuda else "") + (f", dtype=torch.{args.dtype}"
                                                       if args.dtype else "")
    to_args = ", ".join((["'cuda'"] if cuda else []) + ([f"torch.{args.dtype}"] if args.dtype
                                                        else []))
    eager_move = ("" if not to_args else " + `.cuda()`" if to_args == "'cuda'"
                  else f" + `.to({to_args})`")
    init_args = ", ".join(([f"device='{args.device}'"] if cuda or args.dtype else [])
                          + ([f"dtype=torch.{args.dtype}"] if args.dtype else []))
    device_name = torch.cuda.get_device_name(0) if cuda else f"{os.cpu_count()} CPU(s)"
    mm_version = ""
    if args.eager == "mmengine":
        import mmengine

        mm_version = f", MMEngine {mmengine.__version__}"
    notes = [
        f"torch {torch.__version__}, weightinit {weightinit.__version__}{mm_version}; "
        f"Python {platform.python_version()} on {platform.machine()}, {device_name}, "
        f"{threads} torch thread(s); dtype {args.dtype or 'as declared (float32)'}.",
        f"Medians of {args.repeats} rounds ({args.repeats_large} for models over "
        f"{LARGE_PARAMS / 1e9:g} G parameters); each measurement in a fresh process after a "
        "warm-up on a tiny configuration of the same model; times include construction.",
        "deferred = `with weightinit.deferred(): build()` + "
        f"`init_weights({init_args})`; {eager_label} = eager construction "
        f"on {'MMEngine' if args.eager == 'mmengine' else 'weightinit'}'s classes + "
        f"`init_weights()`{eager_move}; floor = "
        f"`torch.empty(n{floor_args}).normal_()`, allocation included.",
        ("GPU peak = torch.cuda.max_memory_allocated() over the timed region; host peak = "
         if cuda else "peak = ")
        + "ru_maxrss at the end minus the RSS before the timed region; param = parameter bytes.",
    ]
    if not cuda:
        floor_peaks = [fmt_ratio(r.series["floor"].host, r.param_bytes) for r in results]
        notes.append("floor peak/param (checks the peak measurement): "
                     + ", ".join(f"{r.name} {p}" for r, p in zip(results, floor_peaks)) + ".")
    if args.eager == "weightinit":
        why = "MMEngine is not importable here" if not has_mmengine else "--eager weightinit"
        notes.append(f"{why}: the eager path runs on weightinit's own "
                     "BaseModule/Sequential/ModuleList and init_weights().")
    for r in results:
        for kind, s in r.series.items():
            if s.error:
                notes.append(f"{r.name}, {kind}: failed: {s.error}")

    if args.json:
        cases: list[dict[str, Any]] = []
        files: set[str] = set()
        eager_ref = " (ref)" if args.eager == "mmengine" else ""
        for r in results:
            for kind, label in (("deferred", "deferred build + init_weights"),
                                ("eager", f"{eager_label}{eager_ref}"),
                                ("floor", "floor (ref)")):
                s = r.series[kind]
                files |= s.files
                if s.time is not None:
                    peak = s.gpu if cuda else s.host
                    cases.append({"name": f"{r.name}: {label}", "seconds": s.time,
                                  "peak_per_param": None if peak is None
                                  else peak / r.param_bytes})
        write_json(args.json, "deferred", cases, worker_weightinit_files=sorted(files),
                   device=args.device)

    title = f"build + init_weights() on {args.device}"
    headers, rows = result_rows(results, cuda, eager_label)
    if args.markdown:
        print(f"**{title}**\n\n{markdown_table(headers, rows)}\n")
        print("\n".join(f"- {note}" for note in notes))
    else:
        console = Console()
        if not console.is_terminal:  # piped: don't squeeze the table into 80 columns
            console = Console(width=220)
        console.print(rich_table(title, headers, rows))
        for note in notes:
            console.print(note, style="dim", markup=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
