"""Benchmark ``model.init_weights()`` on real OpenMMLab models: MMEngine vs weightinit.mmengine.

What is measured
----------------
For each model (built from the config shipped inside its package, as in
``tests/openmmlab/test_real_models.py``; Pretrained entries pointed at local
files written once, so no download is timed) and for each of ``--repeats``
rounds, in alternating order:

* **MMEngine** — build the model (not timed), time one ``model.init_weights()``
  with MMEngine's own code;
* **bridge** — build the model (not timed), time one ``model.init_weights()``
  with ``weightinit.mmengine`` installed (installed before the build, as a
  training script does);
* **floor** — ``torch.empty(n).normal_()`` for ``n`` = the model's parameter
  element count (one draw per element, allocation and first touch included).

Both runs log nothing: MMEngine's current logger and ``weightinit``'s are set to
WARNING (MMEngine writes its per-parameter record at INFO, so does the bridge).
Times are medians over the rounds, in one process, for each thread count of
``--threads`` (``torch.set_num_threads``; weightinit's pool follows it). The rounds of
all thread counts rotate together, so a busy moment of the machine hits both sides.
Run in the OpenMMLab environment (``make test`` sets up ``.venv-openmmlab``)::

    .venv-openmmlab/bin/python benchmarks/bench_openmmlab.py
    .venv-openmmlab/bin/python benchmarks/bench_openmmlab.py --models vit-b deit-s --repeats 5
    .venv-openmmlab/bin/python benchmarks/bench_openmmlab.py --all --threads 1 2   # the README's
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "openmmlab"))

from support import install_standins  # noqa: E402

install_standins()

from mmengine.logging import MMLogger  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from test_real_models import CASES, MORE_CASES, build, localize_checkpoints  # noqa: E402

import weightinit.mmengine as wim  # noqa: E402


def timed(name: str, bridged: bool, directory: Path) -> float:
    if bridged:
        wim.install()
    try:
        model = build(name, 0)
        localize_checkpoints(model, directory)
        gc.collect()
        start = time.perf_counter()
        model.init_weights()
        return time.perf_counter() - start
    finally:
        if bridged:
            wim.uninstall()


def floor(n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    torch.empty(n).normal_()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    every = list(CASES) + list(MORE_CASES)
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=every,
                        help="default: the 11 main models; --all adds the others")
    parser.add_argument("--all", action="store_true", help="every model of the tests")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="thread counts to measure (default: torch's)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    if args.all:
        args.models = every
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    logging.getLogger("weightinit").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            files = Path(tmp) / name  # each model's own checkpoint files
            files.mkdir()
            n = sum(p.numel() for p in build(name, 0).parameters())
            times = {(t, k): [] for t in args.threads for k in ("mm", "wi", "floor")}
            timed(name, True, files)  # warm-up (imports, caches, first allocations)
            for r in range(args.repeats):
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    order = [("mm", False), ("wi", True)]
                    for key, bridged in order if r % 2 == 0 else order[::-1]:
                        times[(threads, key)].append(timed(name, bridged, files))
                    times[(threads, "floor")].append(floor(n))
            for threads in args.threads:
                med = {k: statistics.median(times[(threads, k)]) for k in ("mm", "wi", "floor")}
                rows.append((name, threads, n, med))
                print(f"{name} ({threads} threads): {med}", file=sys.stderr)
    headers = ["model", "threads", "params", "floor s", "MMEngine s", "weightinit s",
               "MMEngine/weightinit", "weightinit/floor"]
    cells = [[name, str(threads), f"{n / 1e6:.1f} M", f"{m['floor']:.3f}", f"{m['mm']:.3f}",
              f"{m['wi']:.3f}", f"{m['mm'] / m['wi']:.2f}x", f"{m['wi'] / m['floor']:.2f}"]
             for name, threads, n, m in rows]
    slower = [f"{name} ({threads} threads)" for name, threads, _, m in rows if m["wi"] > m["mm"]]
    title = (f"init_weights() on real OpenMMLab models, medians of {args.repeats} "
             f"(torch {torch.__version__})")
    verdict = ("weightinit slower than MMEngine on: " + ", ".join(slower) if slower
               else "weightinit faster than MMEngine on every row")
    if args.markdown:
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


if __name__ == "__main__":
    main()
