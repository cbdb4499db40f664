"""The per-rank plan of a simulated mesh as a table, with time estimated on this machine."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from rich.table import Table

from ..errors import PlotError
from ..planning.meshplan import MeshPlan


def fill_throughput(elements: int = 1 << 22, repeats: int = 3) -> float:
    """Elements per second one thread draws with ``normal_`` here (median of ``repeats``)."""
    buf = torch.empty(elements)
    buf.normal_()  # touched once: the pages are there
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            buf.normal_()
            times.append(time.perf_counter() - start)
    return elements / statistics.median(times)


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f}"


def mesh_table(plan: MeshPlan, throughput: float | None = None) -> Table:
    """One row per class of ranks with identical work: what each holds, draws and needs, and
    (with ``throughput``, elements/s) the seconds its draws take on one such thread here."""
    mesh = " × ".join(f"{k}={v}" for k, v in plan.mesh.items())
    table = Table(title=f"{plan.layout} on {mesh}: {plan.world:,} ranks, "
                        f"{len(plan.classes)} classes of identical work")
    for col in ("ranks", "count", "local elements", "local GB", "drawn elements",
                "drawn / local", "peak GB"):
        table.add_column(col, justify="left" if col == "ranks" else "right")
    reads = any(c.read_bytes for c in plan.classes)
    if reads:
        table.add_column("checkpoint GB read", justify="right")
        table.add_column("files", justify="right")
    if throughput:
        table.add_column("draw s (est.)", justify="right")
    for c in plan.classes:
        ranks = c.to_dict()["ranks"]
        if len(ranks) > 40:
            ranks = ranks[:37] + "..."
        dtypes = ", ".join(f"{_gb(b)} {d}" for d, b in sorted(c.local_bytes.items()))
        ratio = f"{c.drawn_elements / c.local_elements:.2f}" if c.local_elements else "-"
        row: list[Any] = [ranks, f"{len(c.ranks):,}", f"{c.local_elements:,}", dtypes or "0",
                          f"{c.drawn_elements:,}", ratio, _gb(c.peak_bytes)]
        if reads:
            row += [_gb(c.read_bytes), f"{len(c.files)}"]
        if throughput:
            row.append(f"{c.drawn_elements / throughput:,.1f}")
        table.add_row(*row)
    return table


def plot_mesh(plan: MeshPlan, path: str, dpi: int = 100) -> None:
    """Plot, rank by rank, the memory each rank needs (its shards and its peak) and the
    checkpoint bytes it reads, into one PNG at ``path`` (needs matplotlib)."""
    try:  # optional (weightinit[plot]) and slow to import: only when plotting
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise PlotError("plotting needs matplotlib, which is not installed. Fix: pip install "
                        "'weightinit[plot]' (or pip install matplotlib).") from err
    shards, peaks, reads = [0.0] * plan.world, [0.0] * plan.world, [0.0] * plan.world
    for c in plan.classes:
        for r in c.ranks:
            shards[r] = sum(c.local_bytes.values()) / 1e9
            peaks[r] = c.peak_bytes / 1e9
            reads[r] = c.read_bytes / 1e9
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    mem, read = fig.subplots(1, 2)
    ranks = range(plan.world)
    mem.step(ranks, peaks, where="mid", label="peak (shards + largest whole-tensor temporary)")
    mem.step(ranks, shards, where="mid", linestyle="--", label="shards")
    mem.set(xlabel="rank", ylabel="GB", title="memory per rank")
    mem.set_ylim(bottom=0)
    mem.legend(loc="lower right")
    read.step(ranks, reads, where="mid", color="tab:green")
    read.set(xlabel="rank", ylabel="GB", title="checkpoint bytes read per rank")
    read.set_ylim(bottom=0)
    mesh = " × ".join(f"{k}={v}" for k, v in plan.mesh.items())
    fig.suptitle(f"{plan.layout} on {mesh}: {plan.world:,} ranks")
    fig.savefig(path, dpi=dpi)


__all__ = ["fill_throughput", "mesh_table", "plot_mesh"]
