"""The ``weightinit`` command: plan, initialize and health-check models from config files.

    weightinit plan  CONFIG                   dry run on the meta device: who owns each parameter
    weightinit init  CONFIG --out FILE        build, initialize, save, report
    weightinit check CONFIG [CONFIG ...]      forward/backward on random input: signal per layer

Exit status: 0 on success; 1 when ``check`` flags a problem; 2 for a bad
argument, a bad config or a file that cannot be read or written — with one
line on stderr, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import torch
import torch.nn as nn

from .configfile import InputSpec, load_config, parse_shape, torch_dtype
from .errors import InitError, InitRuntimeError, UsageError
from .execution import seeded
from .health import check_health, plot_health, random_input
from .report import build_report, plan_report
from .version import __version__

PROG = "weightinit"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
REPORT_SUFFIXES = (".json", ".md", ".markdown")
#: Width of tables when stdout is not a terminal (rich would otherwise use 80).
PIPE_WIDTH = 250

logger = logging.getLogger("weightinit")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------ output helpers


class Output:
    """Where the command writes: rich on stdout; progress on stderr only if it is a terminal."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        from rich.console import Console

        out = stdout or sys.stdout
        err = stderr or sys.stderr
        tty = hasattr(out, "isatty") and out.isatty()
        self.console = Console(file=out, width=None if tty else PIPE_WIDTH, highlight=False,
                               soft_wrap=not tty)
        self.stderr = err
        progress = hasattr(err, "isatty") and err.isatty()
        self.progress = Console(file=err, highlight=False) if progress else None

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console.print(*objects, **kwargs)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {text}", markup=True)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Show ``text`` with a spinner while the block runs (terminal only), then its time."""
        if self.progress is None:
            yield
            return
        start = time.perf_counter()
        with self.progress.status(text):
            yield
        self.progress.print(f"[green]✓[/green] {text} [dim]({time.perf_counter() - start:.1f} s)"
                            "[/dim]")


class _Formatter(logging.Formatter):
    """``weightinit: warning: message`` — the same shape as the error lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


# ------------------------------------------------------------------ argument parsing


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        dest="overrides",
                        help="override a config value, e.g. --set model.size=tiny (value: a "
                             "Python literal, else a string); repeatable")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: one line per parameter)")
    common.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line")
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("plan", parents=[common], help="dry run: who will own each parameter",
                       description="Build the model on the meta device (no memory, any size), "
                                   "plan its initialization and print the owner of every "
                                   "parameter and the coverage. Nothing is allocated or written.")
    p.add_argument("config", help="config file (.py, .yaml, .yml or .json)")
    p.add_argument("--summary", action="store_true", help="print only the coverage summary")
    p.add_argument("--report", metavar="FILE", action="append", default=[],
                   help="also write the plan as JSON (.json) or Markdown (.md); repeatable")
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
                                   "(or shrinking) over the layers by more than LIMIT (a "
                                   "log-linear fit over all layers), or non-finite values. "
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
    return parser


def _version() -> str:

    return __version__


def _check_suffix(path: str, allowed: Sequence[str], flag: str) -> None:
    if not path.lower().endswith(tuple(allowed)):
        raise UsageError(f"{flag} {path}: unsupported file type; use one of {', '.join(allowed)}")


# ------------------------------------------------------------------ shared steps


def _load(path: str, overrides: list[str]) -> Any:

    return load_config(path, overrides)


def _seed(cfg: Any, args: argparse.Namespace) -> int:
    return args.seed if args.seed is not None else cfg.seed if cfg.seed is not None else 0


def _settings(cfg: Any, args: argparse.Namespace) -> tuple[str, torch.dtype | None]:

    device = args.device or cfg.device or "cpu"
    dtype_name = args.dtype or cfg.dtype
    dtype = torch_dtype(dtype_name, "--dtype" if args.dtype else cfg.where("dtype")) \
        if dtype_name else None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"device {device!r} is not usable here: {_one_line(err)}") from err
    return device, dtype


def _build_and_init(cfg: Any, args: argparse.Namespace, out: Output
                    ) -> tuple[nn.Module, Any, float]:
    """Build the config's model (deferred unless --eager), initialize it; returns the seconds."""
    device, dtype = _settings(cfg, args)
    torch.manual_seed(_seed(cfg, args))
    how = "eagerly" if args.eager else "deferred, on meta"
    with out.step(f"building {cfg.path.name} ({how})"):
        model = cfg.build(deferred=not args.eager)
    where = f"{device}" + (f", {str(dtype).replace('torch.', '')}" if dtype else "")
    with out.step(f"initializing {type(model).__name__} on {where}"):
        start = time.perf_counter()
        with seeded(_seed(cfg, args)):  # values depend on (seed, name, rule) only
            record = cfg.initialize(model, device=device, dtype=dtype)
        elapsed = time.perf_counter() - start
    return model, record, elapsed


def _print_report(rep: Any, out: Output, summary: bool) -> None:
    if not summary:
        out.print(rep.rich_table())
    out.print(rep.rich_coverage())
    for note in rep.notes:
        out.print(note)
    for w in rep.warnings():
        out.warn(w)


def _write_reports(rep: Any, paths: list[str], out: Output) -> None:
    for path in paths:
        _parent(path)
        rep.write(path)
        out.print(f"wrote {path}")


def _parent(path: str) -> None:
    Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def save_checkpoint(model: nn.Module, path: str) -> int:
    """Save ``model``'s state dict to ``path`` (.safetensors or torch.save); returns bytes.

    Written to a temporary file first and renamed, so a failed save leaves no
    partial checkpoint. Tied parameters are stored once in safetensors.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        try:
            if target.suffix.lower() == ".safetensors":
                import inspect

                from safetensors.torch import save_model

                extra = ({"force_contiguous": True}  # older safetensors lack the flag
                         if "force_contiguous" in inspect.signature(save_model).parameters else {})
                save_model(model, str(tmp), metadata={"format": "pt"}, **extra)
            else:
                torch.save(model.state_dict(), tmp)
        except (ValueError, RuntimeError, TypeError) as err:
            raise InitRuntimeError(f"cannot save {type(model).__name__} to {path}: "
                                   f"{_one_line(err)}") from err
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # the writer may create it private; give it the usual mode
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target.stat().st_size


# ------------------------------------------------------------------ commands


def cmd_plan(args: argparse.Namespace, out: Output) -> int:

    for path in args.report:
        _check_suffix(path, REPORT_SUFFIXES, "--report")
    cfg = _load(args.config, args.overrides)
    with out.step(f"building {cfg.path.name} on meta"):
        model = cfg.build(deferred=True)
    with out.step("planning"):
        plan = cfg.plan(model)
    rep = plan_report(plan, model)
    _print_report(rep, out, args.summary)
    _write_reports(rep, args.report, out)
    if rep.undefined:
        names = ", ".join(n for n, _ in rep.undefined)
        raise InitError(f"{cfg.path.name}: {len(rep.undefined)} tensor(s) would be left without "
                        f"a defined value: {names}. Fix: add an init_cfg rule that covers them.")
    return 0


def cmd_init(args: argparse.Namespace, out: Output) -> int:

    _check_suffix(args.out, CHECKPOINT_SUFFIXES, "--out")
    for path in args.report:
        _check_suffix(path, REPORT_SUFFIXES, "--report")
    cfg = _load(args.config, args.overrides)
    model, record, seconds = _build_and_init(cfg, args, out)
    with out.step("measuring"):
        rep = build_report(model, record)
    out.print(f"{rep.root}: {len(rep):,} parameters, {rep.total_elements:,} elements, "
              f"initialized in {seconds:.2f} s")
    _print_report(rep, out, args.summary)
    with out.step(f"saving {args.out}"):
        size = save_checkpoint(model, args.out)
    out.print(f"wrote {args.out} ({size / 1e6:,.1f} MB)")
    _write_reports(rep, args.report, out)
    return 0


def cmd_check(args: argparse.Namespace, out: Output) -> int:

    if args.plot:
        _check_suffix(args.plot, (".png",), "--plot")
        try:
            import matplotlib  # noqa: F401
        except ImportError as err:
            raise UsageError("--plot needs matplotlib, which is not installed. Fix: pip install "
                             "'weightinit[plot]' (or pip install matplotlib).") from err
    for path in args.report:
        _check_suffix(path, REPORT_SUFFIXES, "--report")
    if not args.limit > 1:
        raise UsageError(f"--limit must be > 1, got {args.limit:g}")
    shape = parse_shape(args.input_shape, "--input-shape") if args.input_shape else None
    configs = [_load(path, args.overrides) for path in args.config]
    specs = []
    for cfg in configs:  # every config is checked for an input before any model is built
        spec = cfg.input
        if shape is not None:
            spec = InputSpec(shape, spec.dtype, spec.high) if spec else InputSpec(shape)
        if spec is None:
            raise UsageError(f"{cfg.path.name}: no input shape for the check. Fix: add input = "
                             "dict(shape=[...]) to the config or pass --input-shape.")
        specs.append(spec)
    results = []
    labels: dict[str, int] = {}
    for cfg, spec in zip(configs, specs):
        model, _, _ = _build_and_init(cfg, args, out)
        ref = next(model.parameters(), None)
        high = spec.high
        if spec.dtype == "long" and high is None:
            emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
            if emb is None:
                raise UsageError(f"{cfg.path.name}: input.dtype is long but the model has no "
                                 "nn.Embedding to take the number of token ids from. Fix: add "
                                 "input.high=<number of token ids>.")
            high = emb.num_embeddings
        x = random_input(spec.shape, spec.dtype, high,
                         device=ref.device if ref is not None else None, seed=_seed(cfg, args),
                         float_dtype=ref.dtype if ref is not None and ref.is_floating_point()
                         else None)
        labels[cfg.name] = labels.get(cfg.name, 0) + 1
        label = cfg.name if labels[cfg.name] == 1 else f"{cfg.name} ({labels[cfg.name]})"
        with out.step(f"forward and backward of {label} on {tuple(spec.shape)}"):
            res = check_health(model, x, label=label, limit=args.limit)
        results.append(res)
        if not args.summary:
            out.print(res.rich_table())
        style = "red" if res.flagged else "green"
        out.print(f"[{style}]{res.verdict()}[/{style}]", markup=True)
        del model
    if args.plot:
        _parent(args.plot)
        with out.step(f"plotting {args.plot}"):
            plot_health(results, args.plot)
        out.print(f"wrote {args.plot}")
    for path in args.report:
        _parent(path)
        _write_health(results, path)
        out.print(f"wrote {path}")
    return 1 if any(r.flagged for r in results) else 0


def _write_health(results: list[Any], path: str) -> None:
    import json

    if path.lower().endswith(".json"):
        text = json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    else:
        lines = ["# weightinit check", ""]
        for r in results:
            lines += [f"## {r.label}", "", f"{r.verdict()}", "",
                      "| # | layer | type | activation std | gradient std |",
                      "|---:|---|---|---:|---:|"]
            for i, s in enumerate(r.layers):
                grad = "" if s.grad_std is None else f"{s.grad_std:.3g}"
                lines.append(f"| {i} | `{s.name}` | {s.type} | {s.act_std:.3g} | {grad} |")
            lines.append("")
        text = "\n".join(lines)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


# ------------------------------------------------------------------ entry point


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 check flagged, 2 error)."""
    err_stream = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except UsageError as err:
        print(f"{PROG}: error: {_one_line(err)}", file=err_stream)
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
        return args.func(args, out)
    except (InitError, UsageError, OSError) as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=err_stream)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err_stream)
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
