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
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "openmmlab"))

from support import install_standins  # noqa: E402

install_standins()

from bridge_bench import measure, report, time_init  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from test_real_models import CASES, MORE_CASES, build, localize_checkpoints  # noqa: E402

import weightinit.mmengine as wim  # noqa: E402


def timed(name: str, bridged: bool, directory: Path) -> float:
    return time_init(name, bridged, directory, wim.install, wim.uninstall, build,
                     localize_checkpoints)


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
    rows = measure(args.models, args.threads, args.repeats, timed,
                   lambda name: sum(p.numel() for p in build(name, 0).parameters()))
    report(rows, "MMEngine", f"init_weights() on real OpenMMLab models, medians of {args.repeats} "
           f"(torch {torch.__version__})", args.markdown)


if __name__ == "__main__":
    main()
