"""The init report as data: its parameters, coverage and warnings, with its views."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from . import formatting
from .entries import CoverageRow, ParamReport
from .formatting import fmt, names_text


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
                       f"default or untouched: {names_text(left)}")
        bad = self.mismatched()
        if bad:
            out.append(f"{len(bad)} parameter(s) do not have the std their rule promises: "
                       + ", ".join(f"{p.name} ({fmt(p.std)} vs {fmt(p.promised_std)})"
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
        return formatting.markdown(self, title)

    def write(self, path: str) -> None:
        """Write the report to ``path``: JSON if it ends in ``.json``, else Markdown."""
        text = self.to_json() + "\n" if str(path).endswith(".json") else self.to_markdown()
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)

    # -- rich views ------------------------------------------------------------
    def rich_table(self, title: str | None = None) -> Table:
        """A ``rich.table.Table`` with one row per parameter.

        The dtype and device columns are shown only when they vary; otherwise
        the title says them. Rows left at the default are yellow, rows whose
        std misses the promise red.
        """
        return formatting.rich_table(self, title)

    def rich_coverage(self) -> Table:
        """A ``rich.table.Table`` of the coverage summary."""
        return formatting.rich_coverage(self)
