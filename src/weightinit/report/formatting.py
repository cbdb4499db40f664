"""How an init report looks: Markdown and rich tables, and the text of their cells."""

from __future__ import annotations

from typing import Protocol

from rich.table import Table

from .entries import CoverageRow, ParamReport


class ReportView(Protocol):
    """What the views read of a :class:`~weightinit.report.Report`."""

    root: str
    params: list[ParamReport]
    source: str
    notes: list[str]

    @property
    def total_elements(self) -> int: ...

    def coverage(self) -> list[CoverageRow]: ...

    def warnings(self) -> list[str]: ...


def markdown(report: ReportView, title: str | None = None) -> str:
    """The report as Markdown: totals, a coverage table, warnings, a parameter table."""
    lines = [f"# {title or f'Init report: {report.root}'}", ""]
    lines.append(f"{len(report.params)} parameters, {report.total_elements:,} elements "
                 f"(from the {report.source}).")
    lines += [""] + [f"{n}" for n in report.notes] + ([""] if report.notes else [])
    lines += ["## Coverage", "", "| rule | kind | parameters | elements | share |",
              "|---|---|---:|---:|---:|"]
    total = report.total_elements or 1
    for row in report.coverage():
        lines.append(f"| {md(row.rule)} | {row.kind} | {row.parameters} | "
                     f"{row.elements:,} | {100 * row.elements / total:.1f} % |")
    warns = report.warnings()
    if warns:
        lines.append("")
        lines += [f"> **Warning:** {md(w)}" for w in warns]
    lines += ["", "## Parameters", "",
              "| parameter | shape | dtype | device | rule | declared in | mean | std | "
              "promised std |", "|---|---|---|---|---|---|---:|---:|---:|"]
    for p in report.params:
        lines.append(f"| `{p.name}` | {shape_text(p.shape)} | {p.dtype} | {p.device} | "
                     f"{md(p.rule_text)} | {md(p.declared_in)} | {fmt(p.mean)} | "
                     f"{fmt(p.std)} | {promised(p)} |")
    return "\n".join(lines) + "\n"


def rich_table(report: ReportView, title: str | None = None) -> Table:
    """A ``rich.table.Table`` with one row per parameter.

    The dtype and device columns are shown only when they vary; otherwise
    the title says them. Rows left at the default are yellow, rows whose
    std misses the promise red.
    """
    measured = any(p.std is not None for p in report.params)
    # A column whose value is the same in every row goes into the title instead.
    dtypes = {p.dtype for p in report.params}
    devices = {p.device for p in report.params}
    same = []
    if len(dtypes) == 1:
        same.append(f"all {next(iter(dtypes))}")
    if len(devices) == 1:
        same.append(f"on {next(iter(devices))}")
    default_title = f"{report.root}: {report.source}, {len(report.params)} parameters"
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
    for p in report.params:
        style = "yellow" if p.at_default else "red" if p.std_matches is False else None
        cells = [p.name, shape_text(p.shape)]
        cells += [p.dtype] if len(dtypes) > 1 else []
        cells += [p.device] if len(devices) > 1 else []
        cells += [p.rule_text, p.declared_in]
        if measured:
            cells += [fmt(p.mean), fmt(p.std)]
        cells.append(promised(p))
        table.add_row(*cells, style=style)
    return table


def rich_coverage(report: ReportView) -> Table:
    """A ``rich.table.Table`` of the coverage summary."""
    table = Table(title=f"coverage: {len(report.params)} parameters, "
                        f"{report.total_elements:,} elements", title_justify="left",
                  header_style="bold")
    table.add_column("rule", overflow="fold")
    table.add_column("kind")
    table.add_column("parameters", justify="right")
    table.add_column("elements", justify="right")
    table.add_column("share", justify="right")
    total = report.total_elements or 1
    for row in report.coverage():
        table.add_row(row.rule, row.kind, str(row.parameters), f"{row.elements:,}",
                      f"{100 * row.elements / total:.1f} %",
                      style="yellow" if row.kind == "unchanged" else None)
    return table


def fmt(x: float | None) -> str:
    """A measured or promised value in a cell: 4 significant digits, empty for None."""
    if x is None:
        return ""
    if x == 0:
        return "0"
    return f"{x:.4g}"


def promised(p: ParamReport) -> str:
    """The promised std, with ✓ or ✗ when it can be compared with the measured one."""
    text = fmt(p.promised_std)
    ok = p.std_matches
    return text if ok is None else f"{text} {'✓' if ok else '✗'}"


def shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"



def md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def names_text(params: list[ParamReport], limit: int = 12) -> str:
    names = [p.name for p in params]
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)"
                                       if len(names) > limit else "")

