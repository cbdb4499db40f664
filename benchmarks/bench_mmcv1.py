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
import logging
import os
import sys
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

from bridge_bench import measure, report, time_init  # noqa: E402
from mmcv1_models import CASES, build, localize_checkpoints  # noqa: E402

import weightinit.mmcv as wimc  # noqa: E402


def timed(name: str, bridged: bool, directory: Path) -> float:
    return time_init(name, bridged, directory, wimc.install, wimc.uninstall, build,
                     localize_checkpoints)


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

    def setup(tmp: Path) -> None:  # where MMCV and torch.hub look for the files
        os.environ["TORCH_HOME"] = str(tmp / "torch")
        os.environ["MMCV_HOME"] = str(tmp / "mmcv")

    rows = measure(args.models, args.threads, args.repeats, timed,
                   lambda name: sum(p.numel() for p in build(name, 0).parameters()), setup)
    report(rows, "MMCV", f"init_weights() on real MMCV 1.x models, medians of {args.repeats} "
           f"(torch {torch.__version__})", args.markdown)


if __name__ == "__main__":
    main()
