"""Watching user code: did it change a tensor?

Built-in rules say what they write; for user code (a user-defined
``init_weights``, an initializer that only defines ``__call__``) the session
compares, for the tensors of that module's subtree only, the tensor object,
its storage pointer and its version counter before and after; values are
read (a bit-pattern digest) only to catch writes through ``.data``, which the
version counter misses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..compat import local_tensor
from ..planning.layout import is_sharded

_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_DIGEST_CHUNK = 1 << 22
_ODD = 0x9E3779B97F4A7C15 - (1 << 64)  # odd 64-bit constant: spreads the weights


def storage_ptr(t: Tensor) -> int:
    """Where ``t``'s storage starts (0: a tensor without one, such as some subclasses)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def local(t: Tensor) -> Tensor:
    """The rank's own storage of a sharded tensor (reading it needs no communication)."""
    return local_tensor(t) if is_sharded(t) else t


def digest(t: Tensor) -> tuple[int, int] | None:
    """Two wrapping integer sums over the bit patterns, one weighted by position.

    Any change of values, including a permutation, changes the digest except
    with negligible probability; reading it costs one pass over the tensor.
    """
    if t.is_meta or t.numel() == 0:
        return None
    int_dtype = _INT_OF_SIZE.get(t.element_size())
    if int_dtype is None:
        return None
    bits = t.detach().reshape(-1).view(int_dtype)
    s1 = s2 = 0
    for start in range(0, bits.numel(), _DIGEST_CHUNK):
        chunk = bits[start:start + _DIGEST_CHUNK].to(torch.int64)
        weights = torch.arange(start + 1, start + 1 + chunk.numel(), dtype=torch.int64,
                               device=chunk.device).mul_(_ODD)
        s1 += int(chunk.sum())
        s2 += int((chunk * weights).sum())
    return s1, s2


@dataclass
class TensorState:
    """What a tensor looked like before user code ran."""

    tensor: Tensor
    version: int
    ptr: int
    digest: tuple[int, int] | None

    @classmethod
    def of(cls, t: Tensor) -> TensorState:
        data = local(t)
        return cls(t, t._version, data.data_ptr() if not data.is_meta else 0,
                   digest(data))

    def changed(self, t: Tensor) -> bool:
        if t is not self.tensor or t._version != self.version:
            return True
        data = local(t)
        if not data.is_meta and data.data_ptr() != self.ptr:
            return True
        return digest(data) != self.digest


def tensors_of(module: nn.Module, recurse: bool = True) -> list[Tensor]:
    """The module's parameters and buffers that hold values (not on ``meta``)."""
    return [t for t in (*module.parameters(recurse=recurse), *module.buffers(recurse=recurse))
            if not t.is_meta]


def slot_state(modules: list[nn.Module], storages: dict[int, tuple[Tensor, Tensor]] | None = None
               ) -> dict[tuple[int, str], tuple[Tensor, int, int]]:
    """Each tensor slot of ``modules`` (a subtree): (module id, name) -> (tensor, storage
    pointer, version counter). ``storages``: a transaction's, given each tensor's storage
    (``id -> (tensor, .data)``) it does not hold yet, in the same pass."""
    out = {}
    for m in modules:
        key = id(m)
        for slots in (m._parameters, m._buffers):
            for name, t in slots.items():
                if t is None:
                    continue
                out[(key, name)] = (t, storage_ptr(t) if not t.is_meta else 0, t._version)
                if storages is not None and id(t) not in storages:
                    storages[id(t)] = (t, t.data)
    return out


def replaced(modules: list[nn.Module], before: dict[tuple[int, str], tuple[Tensor, int, int]],
             moved: dict[int, int]) -> tuple[list[tuple[Tensor | None, Tensor]], bool]:
    """(old, new) for slots of the subtree (``modules``, walked after user code ran) it
    replaced or re-pointed (``.data =``), and whether a slot it had before is gone;
    ``moved``: tensors the run itself moved to a fresh storage (and where)."""
    out = []
    kept = 0  # slots that were there before
    for m in modules:
        key = id(m)
        for slots in (m._parameters, m._buffers):
            for name, t in slots.items():
                if t is None:
                    continue
                old = before.get((key, name))
                if old is None or old[0] is not t:
                    out.append((old[0] if old is not None else None, t))
                    kept += old is not None
                    continue
                kept += 1
                ptr = storage_ptr(t) if not t.is_meta else 0
                if old[1] != ptr and moved.get(id(t)) != ptr:
                    out.append((t, t))
    return out, kept < len(before)


def other_modules(after: list[tuple[str, nn.Module]],
                  before: list[tuple[str, nn.Module]]) -> bool:
    """User code added, removed, moved or renamed modules of the subtree it ran on (its
    named modules ``before`` and ``after`` the call)."""
    return len(after) != len(before) or any(a[1] is not b[1] or a[0] != b[0]
                                            for a, b in zip(after, before))
