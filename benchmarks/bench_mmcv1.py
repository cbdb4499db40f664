"""Benchmark ``model.init_weights()`` on real MMCV 1.x models: MMCV 1.7 vs weightinit.mmcv.

What is measured
----------------
For each model (built from the config shipped inside its package, as in
``tests/mmcv1/test_mmcv1_real_models.py``; its pretrained checkpoints written once, with random
values, where MMCV's loaders look for them — torch.hub's cache and MMCV's home in a temporary
directory — so both sides load them and no download is timed) and for each of ``--repeats``
rounds, in alternating order:

* **MMCV** — build the model (not timed), time one ``model.init_weights()`` with MMCV's own
  code;
* **bridge** — build the model (not timed), time one ``model.init_weights()`` with
  ``weightinit.mmcv`` installed (installed before the build, as a training script does);
* **floor** — ``torch.empty(n).normal_()`` for ``n`` = the model's parameter element count
  (one draw per element, allocation and first touch included).

Neither side logs: MMCV's ``mmcv`` logger (the one its ``BaseModule`` writes to) and
``weightinit``'s are at WARNING. Times are medians over the rounds, in one process, for each
thread count of ``--threads`` (``torch.set_num_threads``; weightinit's pool follows it); the
rounds of all thread counts rotate together, so a busy moment of the machine hits both sides.
Run in the MMCV 1.x environment (``make test`` sets up ``.venv-mmcv1``)::

    .venv-mmcv1/bin/python benchmarks/bench_mmcv1.py
    .venv-mmcv1/bin/python benchmarks/bench_mmcv1.py --models vit-b detr --repeats 5
    .venv-mmcv1/bin/python benchmarks/bench_mmcv1.py --threads 1 2 --repeats 3 --markdown
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "mmcv1"))

import mmcv1_support as support  # noqa: E402

support.prepare()
support.quiet_logs()  # (first: MMCV's BaseModule writes to it)
from mmcv.utils import get_logger  # noqa: E402

for _package in ("mmdet", "mmcls", "mmseg"):  # the codebases' own loggers: their backbones log
    get_logger(_package, log_level=logging.WARNING)

from mmcv1_models import CASES, build, localize_checkpoints  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import weightinit.mmcv as wimc  # noqa: E402


def timed(name: str, bridged: bool, directory: Path) -> float:
    if bridged:
        wimc.install()
    try:
        model = build(name, 0)
        localize_checkpoints(model, directory)
        gc.collect()
        start = time.perf_counter()
        model.init_weights()
        return time.perf_counter() - start
    finally:
        if bridged:
            wimc.uninstall()


def floor(n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    torch.empty(n).normal_()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES),
                        help="default: every model of the tests")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="thread counts to measure (default: torch's)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    logging.getLogger("weightinit").setLevel(logging.WARNING)
    warnings.simplefilter("ignore")  # the codebases' deprecation notices, at every build
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TORCH_HOME"] = str(Path(tmp) / "torch")
        os.environ["MMCV_HOME"] = str(Path(tmp) / "mmcv")
        for name in args.models:
            files = Path(tmp) / name  # each model's own local checkpoint files
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
    headers = ["model", "threads", "params", "floor s", "MMCV s", "weightinit s",
               "MMCV/weightinit", "weightinit/floor"]
    cells = [[name, str(threads), f"{n / 1e6:.1f} M", f"{m['floor']:.3f}", f"{m['mm']:.3f}",
              f"{m['wi']:.3f}", f"{m['mm'] / m['wi']:.2f}x", f"{m['wi'] / m['floor']:.2f}"]
             for name, threads, n, m in rows]
    slower = [f"{name} ({threads} threads)" for name, threads, _, m in rows if m["wi"] > m["mm"]]
    title = (f"init_weights() on real MMCV 1.x models, medians of {args.repeats} "
             f"(torch {torch.__version__})")
    verdict = ("weightinit slower than MMCV on: " + ", ".join(slower) if slower
               else "weightinit faster than MMCV on every row")
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
