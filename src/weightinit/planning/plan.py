"""The plan: every tensor's ordered writers, and the steps that execute them.

A :class:`Plan` is immutable and is the only source of truth of a run:
``plan()`` returns it, and ``init_weights()``, ``initialize()`` and
``load_checkpoint()`` execute it. Its events are :class:`Write` (one op on one
tensor) and :class:`~weightinit.planning.ops.UserCall` (user code over a
subtree), in MMEngine's priority order; :func:`schedule` keeps only the last
write of each tensor between the user calls that can see it, so each tensor
is written once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..checkpoint.loader import LoadReport
from .ops import OpKind, UserCall, Writer

__all__ = ["Plan", "PlanEntry", "Step", "Write", "schedule", "subtree_tensors"]


@dataclass(frozen=True, eq=False)
class Write:
    """``op`` writes ``tensor``."""

    tensor: Tensor = field(repr=False)
    op: Any


Event = Write | UserCall
#: a batch of writes (each tensor at most once), or user code to run
Step = tuple[Write, ...] | UserCall


def subtree_tensors(module: nn.Module) -> list[Tensor]:
    """Parameters and buffers user code running on ``module`` can see."""
    return list(module.parameters()) + list(module.buffers())


def schedule(events: tuple[Event, ...] | list[Event]) -> list[Step]:
    """Batches of consecutive writes (each tensor once, its last write) and the user calls
    between them, in execution order.

    Execution keeps the writes pending across user calls (see
    :mod:`weightinit.execution.pending`): a later write of a tensor replaces a
    pending one, user code that overwrites a tensor cancels its pending
    write, and one that reads it has it done first.
    """
    steps: list[Step] = []
    batch: dict[int, Write] = {}
    for ev in events:
        if isinstance(ev, Write):
            batch.pop(id(ev.tensor), None)
            batch[id(ev.tensor)] = ev
            continue
        if batch:
            steps.append(tuple(batch.values()))
            batch = {}
        steps.append(ev)
    if batch:
        steps.append(tuple(batch.values()))
    return steps


@dataclass(frozen=True)
class PlanEntry:
    """Who writes one tensor, in order; the last one owns it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    writers: tuple[Writer, ...] = ()

    @property
    def owner(self) -> Writer | None:
        return self.writers[-1] if self.writers else None

    @property
    def owner_info(self) -> str:
        owner = self.owner
        if owner is None:
            return "not changed (keeps its value from construction)"
        if owner.kind is OpKind.DEFAULT:
            return owner.declared_in
        if isinstance(owner, UserCall):
            before = [w for w in self.writers[:-1] if not isinstance(w, UserCall)]
            prior = f"; before it: {before[-1].info}" if before else ""
            return f"{owner.info} (runs user code{prior})"
        return owner.info

    @property
    def declared_in(self) -> str:
        owner = self.owner
        return "PyTorch default" if owner is None else owner.declared_in


@dataclass(frozen=True, eq=False)
class Plan:
    """The resolved plan of one initialization: nothing in it has been written.

    ``events`` are the writes and user calls in priority order (defaults of
    deferred tensors first); ``visited`` the BaseModules whose ``init_weights``
    it stands for; ``undefined`` the (name, reason) of deferred tensors with
    no value of their own that only user code can give one (or, with
    ``allow_undefined``, that nothing covers).
    """

    root: str
    model: nn.Module = field(repr=False)
    events: tuple[Event, ...] = field(repr=False)
    visited: tuple[nn.Module, ...] = field(default=(), repr=False)
    loads: tuple[LoadReport, ...] = ()
    undefined: tuple[tuple[str, str], ...] = ()
    #: tensors are allocated (meta ones) or moved to ``device``/``dtype`` when executed
    materialize: bool = False
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    #: the model's slots as planned (``slots_of``), when it is to be materialized: no user
    #: code runs between planning and allocation, so allocation walks these
    slots: tuple = field(default=(), repr=False)
    #: with ``plan(..., mesh=...)``: what every rank of the simulated mesh does
    #: (:class:`~.meshplan.MeshPlan`)
    ranks: Any = field(default=None, repr=False)

    @functools.cached_property
    def steps(self) -> list[Step]:
        return schedule(self.events)

    @functools.cached_property
    def _writers(self) -> dict[int, list[Writer]]:
        writers: dict[int, list[Writer]] = {}
        for ev in self.events:
            if isinstance(ev, Write):
                writers.setdefault(id(ev.tensor), []).append(ev.op)
            else:
                for t in subtree_tensors(ev.module):
                    writers.setdefault(id(t), []).append(ev)
        return writers

    def _entry(self, name: str, t: Tensor) -> PlanEntry:
        return PlanEntry(name, tuple(t.shape), str(t.dtype).replace("torch.", ""),
                         tuple(self._writers.get(id(t), ())))

    @functools.cached_property
    def entries(self) -> dict[str, PlanEntry]:
        """Parameter name -> its writers."""
        return {n: self._entry(n, p) for n, p in self.model.named_parameters()}

    @functools.cached_property
    def buffers(self) -> dict[str, PlanEntry]:
        """Buffer name -> its writers, for the buffers something writes."""
        return {n: self._entry(n, b) for n, b in self.model.named_buffers()
                if id(b) in self._writers}

    def __getitem__(self, name: str) -> PlanEntry:
        return self.entries[name]

    def __iter__(self) -> Iterator[PlanEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def owners(self) -> dict[str, str]:
        """Parameter name -> text of the rule that finally owns it."""
        return {n: e.owner_info for n, e in self.entries.items()}

    @property
    def naive_writes(self) -> int:
        """Tensor writes an eager, write-every-rule execution would make."""
        return sum(isinstance(e, Write) for e in self.events)

    @property
    def default_writes(self) -> int:
        """Writes of PyTorch defaults (those an eager model makes at construction)."""
        return sum(isinstance(e, Write) and e.op.kind is OpKind.DEFAULT for e in self.events)

    @property
    def planned_writes(self) -> int:
        """Tensor writes execution makes if user code reads and overwrites none of them
        (each tensor once; user code that reads one has it written first, one that
        overwrites it cancels it)."""
        return len({id(e.tensor) for e in self.events if isinstance(e, Write)})

    @property
    def has_user_code(self) -> bool:
        """True if user code runs (user ``init_weights``, ``__call__`` initializers, user
        rule classes, data-driven steps): only then can a write fail after planning."""
        return any(isinstance(e, UserCall) or (e.op.kind is OpKind.RULE and e.op.user_defined)
                   for e in self.events)

    @property
    def reads_checkpoints(self) -> bool:
        return any(isinstance(e, Write) and e.op.kind is OpKind.CHECKPOINT for e in self.events)

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "parameters": [
            {"name": e.name, "shape": list(e.shape), "dtype": e.dtype, "owner": e.owner_info,
             "declared_in": e.declared_in, "writers": len(e.writers)}
            for e in self.entries.values()]}

    def __str__(self) -> str:
        lines = [f"Plan for {self.root}: {len(self.entries)} parameters, "
                 f"{self.planned_writes} writes (an eager run makes {self.naive_writes})"]
        for e in self.entries.values():
            lines.append(f"  {e.name} {tuple(e.shape)}: {e.owner_info}  [{e.declared_in}]")
        return "\n".join(lines)
