"""The init record: what last wrote every parameter, as data and as log lines.

After the outermost ``init_weights()`` (or ``initialize()``) each parameter
has one :class:`ParamRecord`. Kinds:

* ``rule`` — a rule of some ``init_cfg`` (text: ``KaimingInit: a=0, ...``);
* ``pretrained`` — loaded from a checkpoint;
* ``user`` — a user-defined ``init_weights`` (or ``update_init_info`` text);
* ``initializer`` — an initializer that only defines ``__call__``;
* ``unchanged`` — nothing wrote it: it keeps its value from construction.

Get it with ``model.init_record`` (BaseModule), the return value of
``initialize()``, or ``weightinit.get_init_record(model)``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

KINDS = ("rule", "pretrained", "user", "initializer", "unchanged")


@dataclass(frozen=True)
class ParamRecord:
    """What last wrote one parameter."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    device: str
    kind: str
    info: str
    declared_in: str
    rule: Any = None
    #: why these values depend on the parallel layout (user code that draws from torch's
    #: generator or reduces values, see ``weightinit.run``), or None
    layout_dependent: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
               "device": self.device, "kind": self.kind, "info": self.info,
               "declared_in": self.declared_in}
        if self.layout_dependent is not None:
            out["layout_dependent"] = self.layout_dependent
        return out


@dataclass(frozen=True)
class InitRecord:
    """Per-parameter record of one initialization, keyed by full parameter name."""

    root: str
    params: dict[str, ParamRecord]
    #: one LoadReport per checkpoint load (keys loaded, missing, unexpected, mismatched)
    loads: tuple[Any, ...] = ()

    def __getitem__(self, name: str) -> ParamRecord:
        return self.params[name]

    def __iter__(self) -> Iterator[ParamRecord]:
        return iter(self.params.values())

    def __len__(self) -> int:
        return len(self.params)

    def by_kind(self, kind: str) -> list[ParamRecord]:
        return [r for r in self.params.values() if r.kind == kind]

    def summary(self) -> list[tuple[str, str, int, int]]:
        """(kind, info, parameters, elements) per distinct writer, largest first."""
        groups: dict[tuple[str, str], list[int]] = {}
        for r in self.params.values():
            g = groups.setdefault((r.kind, r.info), [0, 0])
            g[0] += 1
            g[1] += r.numel
        rows = [(k, i, n, e) for (k, i), (n, e) in groups.items()]
        return sorted(rows, key=lambda row: (-row[3], row[1]))

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "parameters": [r.to_dict() for r in self.params.values()]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def lines(self) -> list[str]:
        """One line per parameter: ``name - (shape): what wrote it``."""
        return [f"{r.name} - {r.shape}: {r.info}" for r in self.params.values()]

    def dump(self, path: str) -> None:
        """Write the per-parameter record to ``path`` (JSON if it ends in .json, else text)."""
        with open(path, "w", encoding="utf-8") as fh:
            if path.endswith(".json"):
                fh.write(self.to_json())
            else:
                fh.write("\n".join(self.lines()) + "\n")

    def log(self, logger: logging.Logger) -> None:
        """Summary at INFO, one line per parameter at DEBUG."""
        if logger.isEnabledFor(logging.INFO):
            total = sum(r.numel for r in self.params.values())
            logger.info("initialized %s: %d parameters, %d elements", self.root,
                        len(self.params), total)
            for kind, info, n, elems in self.summary():
                logger.info("  %-11s %6d params %12d elements  %s", kind, n, elems, info)
        if logger.isEnabledFor(logging.DEBUG):
            for line in self.lines():
                logger.debug(line)

    def __str__(self) -> str:
        rows = [f"Init record of {self.root} ({len(self.params)} parameters)"]
        for kind, info, n, elems in self.summary():
            rows.append(f"  {n:5d} params {elems:12d} elements  [{kind}] {info}")
        return "\n".join(rows)
