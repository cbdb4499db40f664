"""The ``weightinit`` command: plan, initialize and health-check models from config files.

    weightinit plan  CONFIG                   dry run on the meta device: who owns each parameter
    weightinit init  CONFIG --out FILE        build, initialize, save, report
    weightinit check CONFIG [CONFIG ...]      forward/backward on random input: signal per layer
    weightinit convert IN OUT.safetensors     a checkpoint's tensors, rewritten as safetensors

Exit status: 0 on success; 1 when ``check`` flags a problem; 2 for a bad
argument, a bad config or a file that cannot be read or written — with one
line on stderr, never a traceback (``--debug`` shows it). Library warnings
(:class:`~weightinit.errors.InitWarning`) print as ``weightinit: warning: ...``
lines on stderr; ``--strict`` makes each an error (exit 2) before anything is written.
``--timeout``/``--deadline`` bound the download of a checkpoint (a ``Pretrained``
rule's URL, or ``convert``'s input) that does not set its own. ``plan`` downloads
nothing: a checkpoint URL is planned from its cached copy, else as a pending
download (``--timeout`` bounds the HEAD request that asks its size). Output
paths (``--out``, ``--report``, ``--plot``) are checked before any work; a
folder the command creates is named in its output.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn, TextIO

from ..checkpoint.downloads import download_limits
from ..errors import InitError, InitWarning, UsageError
from ..version import __version__
from .commands import CHECKPOINT_SUFFIXES, REPORT_SUFFIXES, cmd_check, cmd_init, cmd_plan
from .convert import add_convert, cmd_convert
from .output import PIPE_WIDTH, Output, one_line
from .writing import save_checkpoint

PROG = "weightinit"

logger = logging.getLogger("weightinit")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _Formatter(logging.Formatter):
    """``weightinit: warning: message`` — the same shape as the error lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("-v", "--verbose", action="count", default=0,
                      help="log more (-v: info, -vv: one line per parameter)")
    base.add_argument("--debug", action="store_true",
                      help="show the traceback of an error instead of one line")
    base.add_argument("--timeout", metavar="SECONDS", type=_seconds,
                      help="checkpoint downloads: seconds to wait for each read from the "
                           "server (default: 60)")
    base.add_argument("--deadline", metavar="SECONDS", type=_seconds,
                      help="checkpoint downloads: seconds a whole download may take "
                           "(default: 3600; an interrupted download resumes next time)")
    common = argparse.ArgumentParser(add_help=False, parents=[base])
    common.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        dest="overrides",
                        help="override a config value, e.g. --set model.size=tiny or --set "
                             "init_cfg.0.std=0.02 (an integer indexes a list; value: a "
                             "Python literal, else a string); repeatable")
    common.add_argument("--allow-module", metavar="MODULE", action="append", default=[],
                        dest="allowed_modules",
                        help="let a YAML or JSON config name types from MODULE and its "
                             "submodules (by default only torch.nn, registered names and "
                             "files next to the config; .py configs may name anything); "
                             "repeatable")
    common.add_argument("--strict", action="store_true",
                        help="make every warning (an init_cfg never applied, a layer name "
                             "that matches nothing, skipped checkpoint keys) an error, raised "
                             "before anything is written")
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--device", help="where to materialize the model (default: the config's "
                                      "'device', else cpu)")
    run.add_argument("--dtype", help="floating dtype of the parameters, e.g. bfloat16 (default: "
                                     "the config's 'dtype', else as declared)")
    run.add_argument("--seed", type=int, help="random seed (default: the config's 'seed', else 0)")
    run.add_argument("--eager", action="store_true",
                     help="build the model with real tensors instead of deferred on meta (for "
                          "models whose constructor computes with its weights)")

    parser = _Parser(
        prog=PROG,
        description="Plan, initialize and health-check PyTorch models from init_cfg config "
                    "files (Python, YAML or JSON).",
        epilog="Config files define model = dict(type=..., ...) and optionally init_cfg, "
               "input, device, dtype and seed. Exit status: 0 ok, 1 check flagged a problem, "
               "2 bad arguments or config.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("plan", parents=[common], help="dry run: who will own each parameter",
                       description="Build the model on the meta device (no memory, any size), "
                                   "plan its initialization and print the owner of every "
                                   "parameter and the coverage. Nothing is allocated or written.")
    p.add_argument("config", help="config file (.py, .yaml, .yml or .json)")
    p.add_argument("--summary", action="store_true", help="print only the coverage summary")
    p.add_argument("--report", metavar="FILE", action="append", default=[],
                   help="also write the plan as JSON (.json) or Markdown (.md); repeatable")
    p.add_argument("--mesh", metavar="NAME=SIZE,...",
                   help="also plan every rank of this simulated mesh, e.g. dp=128,tp=8 (no "
                        "processes, no memory)")
    p.add_argument("--layout", choices=("fsdp", "hsdp", "tp", "fsdp_tp"),
                   help="how the model is laid out on --mesh (default: fsdp on one dimension, "
                        "fsdp_tp on two; tensor parallelism by a Llama's plan)")
    p.add_argument("--json", action="store_true",
                   help="with --mesh: print the per-rank plan as JSON instead of the tables")
    p.add_argument("--plot", metavar="FILE.png",
                   help="with --mesh: plot memory and checkpoint bytes read per rank to this PNG "
                        "(needs matplotlib: weightinit[plot])")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("init", parents=[common, run],
                       help="build, initialize and save a model; print and write the report",
                       description="Build the model (deferred: each tensor allocated and "
                                   "written once), initialize it by its init_cfg, save the "
                                   "weights and print the init report.")
    p.add_argument("config", help="config file (.py, .yaml, .yml or .json)")
    p.add_argument("--out", "-o", metavar="FILE", required=True,
                   help="checkpoint to write: .safetensors, or .pth/.pt/.bin (torch.save)")
    p.add_argument("--report", metavar="FILE", action="append", default=[],
                   help="write the init report as JSON (.json) or Markdown (.md); repeatable")
    p.add_argument("--summary", action="store_true",
                   help="print only the coverage summary, not one row per parameter")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("check", parents=[common, run],
                       help="health check: activation and gradient std per layer",
                       description="Initialize each model, run a forward and a backward pass "
                                   "on random input and record the std of every layer's "
                                   "output and of the gradient reaching it. Flags exploding or "
                                   "vanishing signal: the activation or gradient std growing "
                                   "(or shrinking) over the layers by more than LIMIT (the "
                                   "median per-layer trend, so one small head does not "
                                   "count), or non-finite values. "
                                   "Exit status 1 if any config is flagged.")
    p.add_argument("config", nargs="+", help="config file(s); several are compared in one plot")
    p.add_argument("--input-shape", metavar="SHAPE",
                   help="input shape, e.g. 8,3,224,224 (default: the config's input.shape)")
    p.add_argument("--plot", metavar="FILE.png", help="plot the statistics to this PNG "
                                                      "(needs matplotlib: weightinit[plot])")
    p.add_argument("--limit", type=float, default=100.0,
                   help="bound on the activation and gradient gains over the layers "
                        "(default: 100)")
    p.add_argument("--report", metavar="FILE", action="append", default=[],
                   help="write the statistics as JSON (.json) or Markdown (.md); repeatable")
    p.add_argument("--summary", action="store_true", help="print only one verdict per config")
    p.set_defaults(func=cmd_check)

    add_convert(sub, base)
    return parser


@contextmanager
def _warnings_to(stream: TextIO) -> Iterator[None]:
    """Show library warnings as ``weightinit: warning: ...`` lines on ``stream``, each once."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", InitWarning)
        show = warnings.showwarning

        def showwarning(message: Warning | str, category: type[Warning], filename: str,
                        lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
            if issubclass(category, InitWarning):
                print(f"{PROG}: warning: {one_line(message)}", file=stream)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        yield


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 check flagged, 2 error)."""
    err_stream = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except UsageError as err:
        print(f"{PROG}: error: {one_line(err)}", file=err_stream)
        return 2
    except SystemExit as exit_:  # --help and --version exit 0 through argparse
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help(stdout or sys.stdout)
        return 2
    out = Output(stdout, stderr)
    handler = logging.StreamHandler(err_stream)
    handler.setFormatter(_Formatter())
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    handler.setLevel(level)
    saved_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, saved_level) if saved_level else level)
    try:
        with _warnings_to(err_stream), download_limits(args.timeout, args.deadline):
            return args.func(args, out)
    except (InitError, UsageError, OSError) as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {one_line(err)}", file=err_stream)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err_stream)
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)


__all__ = ["CHECKPOINT_SUFFIXES", "PIPE_WIDTH", "PROG", "REPORT_SUFFIXES", "Output",
           "build_parser", "cmd_check", "cmd_convert", "cmd_init", "cmd_plan", "main",
           "save_checkpoint"]
