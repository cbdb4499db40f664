"""Benchmark sharded initialization: a Llama-style 1B decoder on 1 and 2 CPU ranks.

What is measured
----------------
Each row runs in fresh processes (this script re-run with a hidden
``--worker`` flag), one per rank, ranks joined by ``torch.distributed`` with
the ``gloo`` backend on 127.0.0.1. The machine's cores are split between the
ranks (``torch.set_num_threads(cores // ranks)``), so every row uses the same
hardware. Per round, timed from before construction to after initialization
(a barrier before and after, the slowest rank's time reported):

* **weightinit, 1 process** — ``with weightinit.deferred(): model = llama()``,
  then ``model.init_weights(seed=0)``: the unsharded baseline;
* **weightinit, FSDP2 N ranks** — the same deferred build, ``fully_shard``
  on every decoder layer, the embedding, the head and the root over an
  N-rank CPU mesh, then ``model.init_weights(seed=0)``: each rank allocates
  and writes only its shards;
* **MMEngine, 1 process** (when importable) — eager construction on
  MMEngine's ``BaseModule`` classes and ``init_weights()``: MMEngine cannot
  initialize a sharded model, so each of its ranks would pay this whole cost;
* **floor** — per rank, ``torch.empty(n).normal_()`` for the ``n`` elements
  that rank holds (allocation included), on the same threads.

Peak memory per rank is the growth of the resident set size during the
timed rounds: ``ru_maxrss`` after them minus the RSS before the first one
(after a warm-up on the tiny configuration and ``gc.collect()``), the largest
over ranks, also given per byte of the parameters that rank holds. Times are
medians over ``--repeats`` rounds.

Run from the repository root::

    python benchmarks/bench_sharded.py --markdown
    python benchmarks/bench_sharded.py --size tiny --repeats 2   # a quick check
    python benchmarks/bench_sharded.py --size tiny --repeats 1 --json out.json

``--json PATH`` writes the medians, and the ``weightinit.__file__`` every rank
imported, for ``compare.py``. ``--size tiny`` is the small configuration for
smoke runs (its numbers mean little); the default stays ``1b``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(spec: dict[str, Any]) -> dict[str, Any] | None:
    """One rank of one row: returns (on rank 0) the row's measurements."""
    import torch

    rank, world, kind = spec["rank"], spec["world"], spec["kind"]
    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, str(ROOT / "examples"))
    import logging

    import models

    import weightinit as wi
    from weightinit import compat

    logging.getLogger("weightinit").setLevel(logging.ERROR)
    mesh = None
    if kind == "fsdp":
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        fully_shard = compat.fully_shard_function()

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]),
                          RANK=str(rank), WORLD_SIZE=str(world))
        dist.init_process_group("gloo")
        mesh = init_device_mesh("cpu", (world,))
    kit = None
    if kind == "mmengine":
        from types import SimpleNamespace

        from mmengine.logging import MMLogger
        from mmengine.model import BaseModule, ModuleList, Sequential

        MMLogger.get_current_instance().setLevel(logging.WARNING)
        kit = SimpleNamespace(BaseModule=BaseModule, Sequential=Sequential,
                              ModuleList=ModuleList)

    def barrier() -> None:
        if mesh is not None:
            dist.barrier()

    def run(size: str) -> tuple[float, int]:
        barrier()
        start = time.perf_counter()
        if kind == "mmengine":
            model = models.llama(kit, size=size)
            model.init_weights()
        else:
            with wi.deferred():
                model = models.llama(size=size)
            if mesh is not None:
                for layer in model.layers:
                    fully_shard(layer, mesh=mesh)
                fully_shard(model.embed, mesh=mesh)
                fully_shard(model.lm_head, mesh=mesh)
                fully_shard(model, mesh=mesh)
            model.init_weights(seed=0)
        elapsed = time.perf_counter() - start
        barrier()
        local = sum(p._local_tensor.numel() if hasattr(p, "_local_tensor") else p.numel()
                    for p in model.parameters())
        del model
        gc.collect()
        return elapsed, local

    run("tiny")
    gc.collect()
    base = current_rss_kib()
    times, local = [], 0
    for _ in range(spec["repeats"]):
        t, local = run(spec["size"])
        times.append(t)
    peak = max(0, peak_rss_kib() - base)
    floors = []
    for _ in range(spec["repeats"]):
        gc.collect()
        start = time.perf_counter()
        x = torch.empty(local).normal_()
        floors.append(time.perf_counter() - start)
        del x
    mine = dict(time=statistics.median(times), floor=statistics.median(floors),
                peak_kib=peak, local=local, weightinit_file=wi.__file__)
    if mesh is None:
        return dict(ranks=[mine])
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    dist.destroy_process_group()
    return dict(ranks=everyone) if rank == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_row(kind: str, world: int, args: argparse.Namespace) -> dict[str, Any]:
    cores = args.cores or os.cpu_count() or 1
    port = free_port()
    procs = []
    for rank in range(world):
        spec = dict(kind=kind, rank=rank, world=world, port=port, size=args.size,
                    repeats=args.repeats, threads=max(1, cores // world))
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // world)))
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    outs = [p.communicate(timeout=args.timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"{kind} x{world} failed:\n{err[-3000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="1b", help="llama size in examples/models.py")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2],
                        help="FSDP2 rank counts to run (default: 1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per row")
    parser.add_argument("--cores", type=int, default=None, help="cores to split (default: all)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per row")
    parser.add_argument("--no-mmengine", action="store_true",
                        help="skip the MMEngine row even when MMEngine is importable")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the medians as JSON to PATH (read by compare.py)")
    args = parser.parse_args(argv)
    if args.worker:
        out = worker(json.loads(args.worker))
        if out is not None:
            print(json.dumps(out))
        sys.stdout.flush()
        os._exit(0)  # skip interpreter teardown: gloo's threads may abort it after the work

    import importlib.util

    rows = [("weightinit, 1 process (not sharded)", "plain", 1)]
    rows += [(f"weightinit, FSDP2 {w} rank{'s' if w > 1 else ''}", "fsdp", w) for w in args.worlds]
    notes = []
    if args.no_mmengine:
        notes.append("--no-mmengine: the MMEngine row is skipped.")
    elif importlib.util.find_spec("mmengine") is not None:
        rows.append(("MMEngine, 1 process (eager; cannot shard)", "mmengine", 1))
    else:
        notes.append("MMEngine is not importable here: its row is skipped.")
    headers = ["run", "ranks", "params/rank (M)", "time s", "floor s", "time/floor",
               "peak RSS/rank (GiB)", "peak/param bytes"]
    table = []
    cases: list[dict[str, Any]] = []
    files: set[str] = set()
    for label, kind, world in rows:
        result = run_row(kind, world, args)["ranks"]
        files.update(r["weightinit_file"] for r in result)
        slow = max(r["time"] for r in result)
        floor = max(r["floor"] for r in result)
        peak = max(r["peak_kib"] for r in result) * 1024
        local = max(r["local"] for r in result)
        table.append([label, str(world), f"{local / 1e6:.1f}", f"{slow:.2f}", f"{floor:.2f}",
                      f"{slow / floor:.2f}x", f"{peak / 2**30:.2f}", f"{peak / (4 * local):.2f}x"])
        ref = " (ref)" if kind == "mmengine" else ""
        cases += [{"name": f"{label}{ref}", "seconds": slow, "peak_per_param": peak / (4 * local)},
                  {"name": f"{label}: floor (ref)", "seconds": floor}]
    if args.json:
        import platform

        import torch

        import weightinit

        Path(args.json).write_text(json.dumps({
            "benchmark": "sharded", "weightinit_file": weightinit.__file__,
            "weightinit_version": weightinit.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "size": args.size, "cases": cases,
            "worker_weightinit_files": sorted(files)}, indent=1))
    title = (f"Llama {args.size}, float32, {args.cores or os.cpu_count()} cores split "
             f"between ranks, medians of {args.repeats}")
    if args.markdown:
        print(f"**{title}**\n")
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|")
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for i, h in enumerate(headers):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in table:
            t.add_row(*row)
        Console().print(t)
    for note in notes:
        print(f"\nNote: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
