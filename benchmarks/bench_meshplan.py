"""Benchmark planning a sharded initialization for every rank of a simulated mesh.

For each world size, a fresh process builds the bundled Llama (``--size``,
default 405b) on ``meta`` and runs ``weightinit.plan(model, mesh=...,
layout="fsdp_tp")`` on a (dp, tp=8) mesh (``fsdp`` when the world is under
8). Printed per world size: the median planning time over ``--repeats``
(the model build excluded), the process's peak resident memory, the number
of rank classes (ranks with identical work) and of distinct (shape,
placements) kinds. Planning should grow with those, not with ranks x tensors.

Run from the repository root::

    python benchmarks/bench_meshplan.py --markdown
    python benchmarks/bench_meshplan.py --size 1b --worlds 8 64 --repeats 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(size: str, world: int, repeats: int) -> dict:
    sys.path.insert(0, str(ROOT / "examples"))
    import torch
    from models import llama

    import weightinit as wi

    with torch.device("meta"):
        model = llama(size=size)
    tp = 8 if world >= 8 else 1
    mesh = f"dp={world // tp},tp={tp}" if tp > 1 else f"dp={world}"
    layout = "fsdp_tp" if tp > 1 else "fsdp"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        plan = wi.plan(model, [dict(type="Normal", layer=["Linear", "Embedding"], std=0.02)],
                       mesh=mesh, layout=layout, allow_undefined=True)
        times.append(time.perf_counter() - start)
    ranks = plan.ranks
    return {"world": world, "mesh": mesh, "layout": layout, "seconds": statistics.median(times),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "classes": len(ranks.classes),
            "params": sum(p.numel() for p in model.parameters()),
            "drawn_over_local": max(c.drawn_elements / c.local_elements
                                    for c in ranks.classes if c.local_elements)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="405b")
    ap.add_argument("--worlds", type=int, nargs="+", default=[8, 64, 256, 1024, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.size, args.worker, args.repeats)))
        return
    rows = []
    for world in args.worlds:
        done = subprocess.run([sys.executable, __file__, "--size", args.size, "--repeats",
                               str(args.repeats), "--worker", str(world)],
                              capture_output=True, text=True, timeout=900, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    head = ("world", "mesh", "layout", "plan s (median)", "peak MB", "rank classes",
            "max drawn / local")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['world']} | {r['mesh']} | {r['layout']} | {r['seconds']:.2f} | "
                     f"{r['peak_mb']:.0f} | {r['classes']} | {r['drawn_over_local']:.2f} |")
    print(f"Llama {args.size} ({rows[0]['params'] / 1e9:.1f} B parameters) on meta, "
          f"weightinit.plan(mesh=...), medians of {args.repeats}")
    print("\n".join(lines) if args.markdown else "\n".join(line.replace("|", " ")
                                                           for line in lines))


if __name__ == "__main__":
    main()
