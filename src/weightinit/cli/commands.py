"""The subcommands: ``plan``, ``init`` and ``check``, and the steps they share."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from ..configfile import InputSpec, ModelConfig, load_config, parse_shape, torch_dtype
from ..errors import InitError, UsageError
from ..health import check_health, plot_health, random_input
from ..planning.meshplan import checkpoint_reads, parse_mesh, plan_mesh, rank_draws
from ..record import InitRecord
from ..report import SUMMARY_SAMPLE, Report, build_report, plan_report
from ..report.meshtable import fill_throughput, mesh_table, plot_mesh
from .output import Output, one_line, parameter_slots, watch_writes
from .writing import check_output, make_parent, save_checkpoint, write_health

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
REPORT_SUFFIXES = (".json", ".md", ".markdown")


def check_suffix(path: str, allowed: Sequence[str], flag: str) -> None:
    """Refuse ``path`` (given with ``flag``) unless it ends in one of ``allowed``."""
    if not path.lower().endswith(tuple(allowed)):
        raise UsageError(f"{flag} {path}: unsupported file type; use one of {', '.join(allowed)}")


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse unusable ``--out``/``--report``/``--plot`` paths before any work (exit 2)."""
    out = getattr(args, "out", None)
    if out is not None:
        check_suffix(out, CHECKPOINT_SUFFIXES, "--out")
        check_output(out, "--out", "model.safetensors", replaced=True)
    for path in args.report:
        check_suffix(path, REPORT_SUFFIXES, "--report")
        check_output(path, "--report", "report.md")
    plot = getattr(args, "plot", None)
    if plot:
        check_suffix(plot, (".png",), "--plot")
        check_output(plot, "--plot", "check.png")


def _parent_for(path: str, out: Output) -> None:
    """Create ``path``'s folder, saying so when it did not exist."""
    created = make_parent(path)
    if created is not None:
        out.print(f"created folder {created}/")


# ------------------------------------------------------------------ shared steps


def _seed(cfg: ModelConfig, args: argparse.Namespace) -> int:
    return args.seed if args.seed is not None else cfg.seed if cfg.seed is not None else 0


def _settings(cfg: ModelConfig, args: argparse.Namespace) -> tuple[str, torch.dtype | None]:
    device = args.device or cfg.device or "cpu"
    dtype_name = args.dtype or cfg.dtype
    dtype = torch_dtype(dtype_name, "--dtype" if args.dtype else cfg.where("dtype")) \
        if dtype_name else None
    _check_device(device, None if args.device else cfg.where("device") if cfg.device else None)
    return device, dtype


def _short(err: BaseException) -> str:
    """The first sentence of ``err`` (backend errors can run to pages)."""
    text = one_line(err)
    text = text.split(". ", 1)[0].rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."


def _check_device(device: str, config_key: str | None) -> None:
    """Refuse a device this torch build or machine cannot allocate on: one line, with a fix.

    ``config_key`` names the config entry the device came from (None: --device or the default).
    """
    fix = ("Fix: pass --device cpu" + (f" (or change {config_key})" if config_key else "")
           + ", or a device this machine has")
    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UsageError(f"device {device!r} is not usable here: not a device name (e.g. cpu, "
                         f"cuda, cuda:1, mps). {fix}.") from err
    if kind.type == "cuda" and not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "no CUDA device is visible")
        raise UsageError(f"device {device!r} is not usable here: {why}. {fix}"
                         + (" (or install a CUDA build of torch)." if torch.version.cuda is None
                            else "."))
    if kind.type == "cuda" and kind.index is not None \
            and kind.index >= torch.cuda.device_count():
        raise UsageError(f"device {device!r} is not usable here: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s). {fix}.")
    try:
        torch.empty(0, device=kind)
    except Exception as err:  # noqa: BLE001 - backends fail with assorted types (AssertionError)
        raise UsageError(f"device {device!r} is not usable here: {_short(err)}. {fix}.") from err


def _build_and_init(cfg: ModelConfig, args: argparse.Namespace, out: Output
                    ) -> tuple[nn.Module, InitRecord, float]:
    """Build the config's model (deferred unless --eager), initialize it; returns the seconds."""
    device, dtype = _settings(cfg, args)
    seed = _seed(cfg, args)
    torch.manual_seed(seed)  # what an eager constructor draws
    how = "eagerly" if args.eager else "deferred, on meta"
    with out.step(f"building {cfg.path.name} ({how})"):
        model = cfg.build(deferred=not args.eager)
    where = f"{device}" + (f", {str(dtype).replace('torch.', '')}" if dtype else "")
    with out.counting(f"initializing {type(model).__name__} on {where}",
                      parameter_slots(model), lazy=True) as advance:
        start = time.perf_counter()
        with watch_writes(model, advance) if out.progress is not None else nullcontext():
            # values depend on (seed, name, rule) only, as for cfg.initialize() in Python
            record = cfg.initialize(model, device=device, dtype=dtype, strict=args.strict,
                                    seed=seed)
        elapsed = time.perf_counter() - start
    return model, record, elapsed


def _print_report(rep: Report, out: Output, summary: bool) -> None:
    if not summary:
        out.print(rep.rich_table())
    out.print(rep.rich_coverage())
    for note in rep.notes:
        out.print(note)
    for w in rep.warnings():
        out.warn(w)


def _write_reports(rep: Report, paths: list[str], out: Output) -> None:
    for path in paths:
        _parent_for(path, out)
        rep.write(path)
        out.print(f"wrote {path}")


# ------------------------------------------------------------------ commands


def cmd_plan(args: argparse.Namespace, out: Output) -> int:
    check_outputs(args)
    if args.plot and not args.mesh:
        raise UsageError("--plot plots the per-rank plan: it needs --mesh, e.g. --mesh dp=8")
    cfg = load_config(args.config, args.overrides, args.allowed_modules)
    with out.step(f"building {cfg.path.name} on meta"):
        model = cfg.build(deferred=True)
    with out.step("planning"):  # downloads nothing: a checkpoint not cached is pending
        plan = cfg.plan(model, strict=args.strict, timeout=args.timeout)
    rep = plan_report(plan, model)
    if args.mesh:
        _plan_mesh(plan, model, args, out, plan.dtype or cfg.torch_dtype)
    else:
        _print_report(rep, out, args.summary)
    _write_reports(rep, args.report, out)
    if rep.undefined:
        names = ", ".join(n for n, _ in rep.undefined)
        raise InitError(f"{cfg.path.name}: {len(rep.undefined)} tensor(s) would be left without "
                        f"a defined value: {names}. Fix: add an init_cfg rule that covers them.")
    return 0


def _plan_mesh(plan: Any, model: Any, args: argparse.Namespace, out: Output, dtype: Any) -> None:
    """``plan --mesh``: every rank of the simulated mesh, as a table (time estimated from this
    machine's one-thread normal_ throughput) or as JSON."""
    layout = args.layout or ("fsdp_tp" if len(parse_mesh(args.mesh)[0]) == 2 else "fsdp")
    draws = {e.name: rank_draws(e.owner, e.shape) for e in plan}
    with out.step(f"laying out every rank of {args.mesh} ({layout})"):
        ranks = plan_mesh(model, args.mesh, layout, draws=draws, dtype=dtype,
                          reads=checkpoint_reads(plan))
    if args.plot:
        _parent_for(args.plot, out)
        plot_mesh(ranks, args.plot)
        out.print(f"wrote {args.plot}")
    if args.json:
        out.print(json.dumps(ranks.to_dict(), indent=1), soft_wrap=True)
        return
    out.print(mesh_table(ranks, fill_throughput()))
    out.print("draw s: an estimate — elements drawn over this machine's one-thread normal_ "
              "throughput; peak: the rank's shards plus its largest temporary (a tensor drawn "
              "whole, a checkpoint slice, a tile buffer per fill thread)")
    for name, why in ranks.refused:
        out.warn(f"{name}: {why}")


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    check_outputs(args)
    cfg = load_config(args.config, args.overrides, args.allowed_modules)
    model, record, seconds = _build_and_init(cfg, args, out)
    # --summary prints no per-tensor numbers: a sample of each large tensor is enough for
    # the std check, at a small fraction of the init's time (the report's notes say so)
    with out.counting("measuring", len(record.params)) as advance:
        rep = build_report(model, record, sample=SUMMARY_SAMPLE if args.summary else None,
                           progress=advance)
    out.print(f"{rep.root}: {len(rep):,} parameters, {rep.total_elements:,} elements, "
              f"initialized in {seconds:.2f} s")
    _print_report(rep, out, args.summary)
    _parent_for(args.out, out)
    with out.step(f"saving {args.out}"):
        size = save_checkpoint(model, args.out)
    out.print(f"wrote {args.out} ({size / 1e6:,.1f} MB)")
    _write_reports(rep, args.report, out)
    return 0


def cmd_check(args: argparse.Namespace, out: Output) -> int:
    check_outputs(args)
    if args.plot:
        try:  # optional (weightinit[plot]): only checked for, before any model is built
            import matplotlib  # noqa: F401
        except ImportError as err:
            raise UsageError("--plot needs matplotlib, which is not installed. Fix: pip install "
                             "'weightinit[plot]' (or pip install matplotlib).") from err
    if not args.limit > 1:
        raise UsageError(f"--limit must be > 1, got {args.limit:g}")
    shape = parse_shape(args.input_shape, "--input-shape") if args.input_shape else None
    configs = [load_config(path, args.overrides, args.allowed_modules) for path in args.config]
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
        _parent_for(args.plot, out)
        with out.step(f"plotting {args.plot}"):
            plot_health(results, args.plot)
        out.print(f"wrote {args.plot}")
    for path in args.report:
        _parent_for(path, out)
        write_health(results, path)
        out.print(f"wrote {path}")
    return 1 if any(r.flagged for r in results) else 0
