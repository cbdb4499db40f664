"""Replay recorded constructor writes (:mod:`.deferred`) on real storage."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .construction import Construction, chain_of, owner_of


def _follow(base: Tensor, chain: tuple) -> Any:
    for fn, args, kwargs in chain:
        base = fn(base, *args, **kwargs)
    return base


def _run_op(op: tuple, tensor: Tensor, mapping: dict[int, Tensor]) -> None:
    def real(a: Any) -> Any:
        if isinstance(a, Tensor) and a.device.type == "meta":
            return _follow(mapping[id(owner_of(a))], chain_of(a))
        return a

    fn, args, kwargs, chain = op
    fn(_follow(tensor, chain), *[real(a) for a in args],
       **{k: real(v) for k, v in kwargs.items()})


def replay(construction: Construction, tensor: Tensor, mapping: dict[int, Tensor],
           start: int = 0) -> None:
    """Run the recorded constructor writes (from the ``start``-th) on real storage, in their
    original order."""
    with torch.no_grad():
        for op in construction.ops[start:]:
            _run_op(op, tensor, mapping)


def replay_all(items: list[tuple[Construction, Tensor]], mapping: dict[int, Tensor]) -> None:
    """Replay several tensors' recorded writes interleaved in their original global order.

    Eager construction draws from the random generator op by op across tensors
    (a model's own init often rewrites every weight after all modules are
    built); replaying in that order draws the same numbers, so a deferred model
    equals the eager one built under the same ``torch.manual_seed``.
    """
    ops = sorted((seq, i, j) for i, (c, _) in enumerate(items) for j, seq in enumerate(c.order))
    with torch.no_grad():
        for _, i, j in ops:
            construction, tensor = items[i]
            _run_op(construction.ops[j], tensor, mapping)
