"""The init report: per parameter, what owns it, where that was declared, and what it holds.

A :class:`Report` is plain data built from an init record and the live model
(:func:`build_report`) or from a plan (:func:`plan_report`, nothing
measured). Per parameter it holds the full name, shape, dtype and device; the
rule that owns it (type and arguments) and where that rule was declared
(``'backbone (ResNet) init_cfg[0]'``, ``'... init_cfg.override'``,
``'checkpoint X key Y (...)'``, ``'user-defined init_weights in Class'`` or
``'PyTorch default (...)'``); the measured mean and std beside the std the
rule promises (:meth:`BaseInit.weight_std`; a rule's bias is a constant, so
it promises 0). A coverage summary counts parameters and elements per rule
and lists the parameters left at the PyTorch default.

Views: :meth:`Report.to_json`, :meth:`Report.to_markdown`,
:meth:`Report.rich_table` and :meth:`Report.rich_coverage`.

Example::

    >>> model.init_weights()
    >>> rep = build_report(model)
    >>> rep["head.fc.weight"].promised_std
    0.01
    >>> open("report.md", "w").write(rep.to_markdown())
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from . import maths as F
from .api import get_init_record
from .errors import InitValueError
from .planning import OpKind, Plan, RuleFill, UserCall
from .record import InitRecord
from .rules import BaseInit, VarianceScalingInit

#: Measured and promised std agree if they differ by less than this many
#: standard errors of a sample std (σ/√(2n) for a normal sample), plus 0.1 %.
STD_TOLERANCE_SIGMAS = 6.0

DEFAULT_LABEL = "PyTorch default"


@dataclass(frozen=True)
class ParamReport:
    """One parameter of the report.

    ``kind`` is the record's kind (``rule``, ``pretrained``, ``user``,
    ``initializer``, ``unchanged``); ``rule_type``/``rule_args`` describe the
    owner; ``mean``/``std`` are measured (population std), ``None`` on
    ``meta``; ``promised_std`` is what the owning rule promises, if anything.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    device: str
    kind: str
    rule_type: str
    rule_args: dict[str, Any]
    info: str
    declared_in: str
    mean: float | None = None
    std: float | None = None
    promised_std: float | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def at_default(self) -> bool:
        """Left at the PyTorch default (or untouched since construction)."""
        return self.kind == "unchanged"

    @property
    def rule_text(self) -> str:
        """``Type(arg=value, ...)`` for rules (without ``layer``/``param``), else the owner."""
        if self.kind == "unchanged":
            return DEFAULT_LABEL
        if self.kind in ("rule", "pretrained"):
            # layer/param say what a rule targets, not what it writes: JSON keeps them
            args = ", ".join(f"{k}={_short(v)}" for k, v in self.rule_args.items()
                             if k not in ("layer", "param"))
            return f"{self.rule_type}({args})"
        return self.info

    @property
    def std_matches(self) -> bool | None:
        """Whether the measured std agrees with the promised one (None: nothing to compare).

        Agreement: |std − promised| ≤ 6·promised/√(2n) + 0.001·promised + 1e-7,
        six standard errors of the sample std of n normal draws.
        """
        if self.std is None or self.promised_std is None or self.numel < 2:
            return None
        if not math.isfinite(self.std):
            return False
        p = self.promised_std
        tol = STD_TOLERANCE_SIGMAS * p / math.sqrt(2 * self.numel) + 1e-3 * p + 1e-7
        return abs(self.std - p) <= tol

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "device": self.device, "numel": self.numel, "kind": self.kind,
                "rule": {"type": self.rule_type, "args": _jsonable(self.rule_args)},
                "info": self.info, "declared_in": self.declared_in, "mean": _num(self.mean),
                "std": _num(self.std), "promised_std": _num(self.promised_std),
                "std_matches": self.std_matches}


@dataclass(frozen=True)
class CoverageRow:
    """Parameters and elements owned by one rule (or by the PyTorch default)."""

    rule: str
    kind: str
    parameters: int
    elements: int

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "kind": self.kind, "parameters": self.parameters,
                "elements": self.elements}


@dataclass
class Report:
    """Per-parameter report of one initialization (or of a plan), with views.

    ``source`` says what it describes (``'init record'`` or ``'plan'``);
    ``notes`` are extra lines for the summary (e.g. planned write counts);
    ``undefined`` lists (name, reason) of tensors a plan leaves without value.
    """

    root: str
    params: list[ParamReport]
    source: str = "init record"
    notes: list[str] = field(default_factory=list)
    undefined: list[tuple[str, str]] = field(default_factory=list)

    def __getitem__(self, name: str) -> ParamReport:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __iter__(self) -> Iterator[ParamReport]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    @property
    def total_elements(self) -> int:
        return sum(p.numel for p in self.params)

    def coverage(self) -> list[CoverageRow]:
        """Parameters and elements per owning rule, most elements first."""
        groups: dict[tuple[str, str], list[int]] = {}
        for p in self.params:
            g = groups.setdefault((p.rule_text, p.kind), [0, 0])
            g[0] += 1
            g[1] += p.numel
        rows = [CoverageRow(r, k, n, e) for (r, k), (n, e) in groups.items()]
        return sorted(rows, key=lambda row: (-row.elements, row.rule))

    def at_default(self) -> list[ParamReport]:
        """Parameters left at the PyTorch default or untouched since construction."""
        return [p for p in self.params if p.at_default]

    def mismatched(self) -> list[ParamReport]:
        """Parameters whose measured std disagrees with what their rule promises."""
        return [p for p in self.params if p.std_matches is False]

    def warnings(self) -> list[str]:
        """Human-readable warnings: parameters at the default, std mismatches, undefined."""
        out = []
        left = self.at_default()
        if left:
            elems = sum(p.numel for p in left)
            out.append(f"{len(left)} parameter(s) ({elems:,} elements) left at the PyTorch "
                       f"default or untouched: {_names(left)}")
        bad = self.mismatched()
        if bad:
            out.append(f"{len(bad)} parameter(s) do not have the std their rule promises: "
                       + ", ".join(f"{p.name} ({_fmt(p.std)} vs {_fmt(p.promised_std)})"
                                   for p in bad[:10]) + (", ..." if len(bad) > 10 else ""))
        if self.undefined:
            out.append(f"{len(self.undefined)} tensor(s) would have no defined value: "
                       + "; ".join(f"{n} ({why})" for n, why in self.undefined))
        return out

    # -- data views ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "source": self.source,
            "totals": {"parameters": len(self.params), "elements": self.total_elements},
            "coverage": [row.to_dict() for row in self.coverage()],
            "left_at_default": [p.name for p in self.at_default()],
            "std_mismatches": [p.name for p in self.mismatched()],
            "undefined": [{"name": n, "reason": why} for n, why in self.undefined],
            "notes": list(self.notes),
            "parameters": [p.to_dict() for p in self.params],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self, title: str | None = None) -> str:
        """The report as Markdown: totals, a coverage table, warnings, a parameter table."""
        lines = [f"# {title or f'Init report: {self.root}'}", ""]
        lines.append(f"{len(self.params)} parameters, {self.total_elements:,} elements "
                     f"(from the {self.source}).")
        lines += [""] + [f"{n}" for n in self.notes] + ([""] if self.notes else [])
        lines += ["## Coverage", "", "| rule | kind | parameters | elements | share |",
                  "|---|---|---:|---:|---:|"]
        total = self.total_elements or 1
        for row in self.coverage():
            lines.append(f"| {_md(row.rule)} | {row.kind} | {row.parameters} | "
                         f"{row.elements:,} | {100 * row.elements / total:.1f} % |")
        warns = self.warnings()
        if warns:
            lines.append("")
            lines += [f"> **Warning:** {_md(w)}" for w in warns]
        lines += ["", "## Parameters", "",
                  "| parameter | shape | dtype | device | rule | declared in | mean | std | "
                  "promised std |", "|---|---|---|---|---|---|---:|---:|---:|"]
        for p in self.params:
            lines.append(f"| `{p.name}` | {_shape(p.shape)} | {p.dtype} | {p.device} | "
                         f"{_md(p.rule_text)} | {_md(p.declared_in)} | {_fmt(p.mean)} | "
                         f"{_fmt(p.std)} | {_promised(p)} |")
        return "\n".join(lines) + "\n"

    def write(self, path: str) -> None:
        """Write the report to ``path``: JSON if it ends in ``.json``, else Markdown."""
        text = self.to_json() + "\n" if str(path).endswith(".json") else self.to_markdown()
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)

    # -- rich views ------------------------------------------------------------
    def rich_table(self, title: str | None = None) -> Any:
        """A ``rich.table.Table`` with one row per parameter.

        The dtype and device columns are shown only when they vary; otherwise
        the title says them. Rows left at the default are yellow, rows whose
        std misses the promise red.
        """
        from rich.table import Table

        measured = any(p.std is not None for p in self.params)
        # A column whose value is the same in every row goes into the title instead.
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        same = []
        if len(dtypes) == 1:
            same.append(f"all {next(iter(dtypes))}")
        if len(devices) == 1:
            same.append(f"on {next(iter(devices))}")
        default_title = f"{self.root}: {self.source}, {len(self.params)} parameters"
        if same:
            default_title += f" ({' '.join(same)})"
        table = Table(title=title or default_title, title_justify="left", header_style="bold")
        table.add_column("parameter", overflow="fold")
        table.add_column("shape")
        if len(dtypes) > 1:
            table.add_column("dtype")
        if len(devices) > 1:
            table.add_column("device")
        table.add_column("rule", overflow="fold")
        table.add_column("declared in", overflow="fold")
        if measured:
            table.add_column("mean", justify="right")
            table.add_column("std", justify="right")
        table.add_column("promised std", justify="right")
        for p in self.params:
            style = "yellow" if p.at_default else "red" if p.std_matches is False else None
            cells = [p.name, _shape(p.shape)]
            cells += [p.dtype] if len(dtypes) > 1 else []
            cells += [p.device] if len(devices) > 1 else []
            cells += [p.rule_text, p.declared_in]
            if measured:
                cells += [_fmt(p.mean), _fmt(p.std)]
            cells.append(_promised(p))
            table.add_row(*cells, style=style)
        return table

    def rich_coverage(self) -> Any:
        """A ``rich.table.Table`` of the coverage summary."""
        from rich.table import Table

        table = Table(title=f"coverage: {len(self.params)} parameters, "
                            f"{self.total_elements:,} elements", title_justify="left",
                      header_style="bold")
        table.add_column("rule", overflow="fold")
        table.add_column("kind")
        table.add_column("parameters", justify="right")
        table.add_column("elements", justify="right")
        table.add_column("share", justify="right")
        total = self.total_elements or 1
        for row in self.coverage():
            table.add_row(row.rule, row.kind, str(row.parameters), f"{row.elements:,}",
                          f"{100 * row.elements / total:.1f} %",
                          style="yellow" if row.kind == "unchanged" else None)
        return table


# ------------------------------------------------------------------ building


def rule_description(rule: Any, kind: str, info: str) -> tuple[str, dict[str, Any]]:
    """(type, arguments) of the owner of a parameter, for the report."""
    if kind == "unchanged":
        return DEFAULT_LABEL, {}
    if isinstance(rule, BaseInit):
        args = dict(rule.args())
        if rule.layer:
            args["layer"] = list(rule.layer)
        if rule.param:
            args["param"] = list(rule.param)
        return rule.type_name, args
    if kind == "pretrained" and rule is not None:
        getter = getattr(rule, "args", None)
        return "Pretrained", dict(getter()) if callable(getter) else {}
    if kind == "user":
        return "user", {}
    return (type(rule).__name__ if rule is not None else kind), {}


def _role(rule: Any, module: nn.Module | None, param: Tensor) -> str:
    # Which of the rule's fills wrote ``param``: its constant bias or its weight fill.
    if isinstance(rule, BaseInit) and module is not None:
        try:
            for role, t in rule.module_targets(module):
                if t is param:
                    return role
        except Exception:  # a rule that cannot describe this module: the weight fill wrote it
            return "weight"
    return "weight"


def promised_std(rule: Any, role: str, shape: tuple[int, ...],
                 module: nn.Module | None = None) -> float | None:
    """The std a rule promises for a tensor it wrote in ``role`` (bias: 0, a constant).

    ``module`` is the module owning the tensor: VarianceScaling (and LeCun)
    count fans by what each unit is connected to (grouped and transposed
    convs, embeddings), so their promise depends on it.
    """
    if not isinstance(rule, BaseInit):
        return None
    if role == "bias":
        return 0.0
    if role not in ("weight", "param"):
        return None
    try:
        if isinstance(rule, VarianceScalingInit) and module is not None and role == "weight":
            std = F.variance_scaling_std(tuple(shape), rule.scale, rule.mode, module)
        else:
            std = rule.weight_std(tuple(shape))
    except Exception:  # rules whose formula does not fit this shape promise nothing
        return None
    return None if std is None else float(std)


def _measure(tensors: list[Tensor]) -> list[tuple[float | None, float | None]]:
    """(mean, population std) of each tensor; one host sync per device, None on meta."""
    out: list[tuple[float | None, float | None]] = [(None, None)] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.device.type != "meta" and t.numel() and t.is_floating_point():
            by_device.setdefault(t.device, []).append(i)
    with torch.no_grad():
        for idxs in by_device.values():
            stats = [torch.stack(torch.std_mean(tensors[i].detach().float(), correction=0)[::-1])
                     for i in idxs]
            for i, (mean, std) in zip(idxs, torch.stack(stats).tolist()):
                out[i] = (mean, std)
    return out


def build_report(model: nn.Module, record: InitRecord | None = None) -> Report:
    """The report of the last initialization of ``model`` (its record + measured values).

    ``record`` defaults to ``weightinit.get_init_record(model)``.

    Example::

        >>> record = weightinit.initialize(net, dict(type='Kaiming', layer='Linear'))
        >>> print(build_report(net, record).to_markdown())
    """

    if record is None:
        record = get_init_record(model)
    if record is None:
        raise InitValueError(f"{type(model).__name__} has no init record: initialize it first "
                             "(init_weights() or weightinit.initialize(model, init_cfg)).")
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    names = [n for n in record.params if n in params]
    stats = _measure([params[n] for n in names])
    rows = []
    for name, (mean, std) in zip(names, stats):
        r = record[name]
        p = params[name]
        rule_type, rule_args = rule_description(r.rule, r.kind, r.info)
        promised = None
        if r.kind == "rule":
            owner = modules.get(name.rsplit(".", 1)[0] if "." in name else "")
            promised = promised_std(r.rule, _role(r.rule, owner, p), tuple(p.shape), owner)
        rows.append(ParamReport(
            name=name, shape=tuple(p.shape), dtype=str(p.dtype).replace("torch.", ""),
            device=str(p.device), kind=r.kind, rule_type=rule_type, rule_args=rule_args,
            info=r.info, declared_in=r.declared_in, mean=mean, std=std,
            promised_std=promised))
    # One line per checkpoint load (keys loaded, missing, unexpected, mismatched).
    notes = [f"checkpoint {load}" for load in getattr(record, "loads", ())]
    return Report(record.root, rows, "init record", notes)


def plan_report(plan: Plan, model: nn.Module | None = None) -> Report:
    """The report of a plan (:func:`weightinit.plan`): owners and promises, nothing measured.

    ``model`` (the planned model) supplies each parameter's device.
    """
    devices = {n: str(p.device) for n, p in model.named_parameters()} if model is not None else {}
    rows = []
    for e in plan:
        owner = e.owner
        promised = None
        if owner is None or owner.kind is OpKind.DEFAULT:
            kind, rule, info = "unchanged", None, e.owner_info
        elif isinstance(owner, UserCall):
            kind = owner.record_kind.value
            rule = owner.rule if owner.rule is not None else owner.init
            info = e.owner_info
        else:
            kind, rule, info = owner.kind.value, owner.rule, owner.info
            if isinstance(owner, RuleFill):
                promised = promised_std(rule, owner.role.value, tuple(e.shape), owner.module)
        rule_type, rule_args = rule_description(rule, kind, info)
        rows.append(ParamReport(
            name=e.name, shape=tuple(e.shape), dtype=e.dtype, device=devices.get(e.name, "meta"),
            kind=kind, rule_type=rule_type, rule_args=rule_args, info=info,
            declared_in=e.declared_in, promised_std=promised))
    defaults = plan.default_writes
    eager = plan.naive_writes
    how = (f"{defaults} at construction + {eager - defaults} by init_cfg" if defaults
           else "by init_cfg")
    notes = [f"{plan.planned_writes} tensor writes planned; an eager run makes {eager} ({how})."]
    return Report(plan.root, rows, "plan", notes, list(plan.undefined))


# ------------------------------------------------------------------ formatting


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if x == 0:
        return "0"
    return f"{x:.4g}"


def _promised(p: ParamReport) -> str:
    text = _fmt(p.promised_std)
    ok = p.std_matches
    return text if ok is None else f"{text} {'✓' if ok else '✗'}"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _names(params: list[ParamReport], limit: int = 12) -> str:
    names = [p.name for p in params]
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)"
                                       if len(names) > limit else "")


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)
