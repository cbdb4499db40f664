"""Canonical identities of rules and recorded constructor inits: what seeds key on.

A seeded tensor's values depend on (seed, its full name, its writer's
``seed_key``). The key is built from *what* writes — the registered name and
the arguments, normalized — never from display text or ``repr`` (which may
hold a memory address, and which we are free to reword). ``1`` and ``1.0``
are the same argument; argument order does not matter.

Example::

    >>> canonical("Normal", {"std": 0.02, "mean": 0})
    "Normal(mean=0.0,std=0.02)"
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..capture.construction import Construction


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def normalize(value: Any) -> str:
    """A stable text for an argument value (the same in every process)."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(float(value))
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(normalize(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ",".join(f"{normalize(k)}:{normalize(value[k])}"
                              for k in sorted(value, key=str)) + "}"
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, Tensor):  # by layout, not content: reading it could be costly
        return f"tensor{tuple(value.shape)}:{str(value.dtype).replace('torch.', '')}"
    if isinstance(value, type) or callable(value):
        return _qualname(value)
    return _qualname(type(value))


def canonical(name: str, args: dict[str, Any]) -> str:
    """``name(k=v,...)`` with keys sorted and values normalized."""
    return f"{name}(" + ",".join(f"{k}={normalize(args[k])}" for k in sorted(args)) + ")"


def construction_key(construction: Construction) -> str:
    """The identity of a recorded constructor init: its ops, in order, with their arguments."""
    parts = []
    for fn, args, kwargs, chain in construction.ops:
        steps = "".join(f".{getattr(f, '__name__', 'op')}{normalize(a)}" for f, a, _ in chain)
        parts.append(f"{getattr(fn, '__name__', 'op')}{steps}{normalize(args)}{normalize(kwargs)}")
    return ";".join(parts)
