"""The books of user code's draws in one run: which tensors are the model's, what was drawn.

:class:`Books` is shared by the :class:`~.userdraws.TiledDraws` modes of
every thread a user call runs in: the model's parameters and buffers found
by identity, by the views of them seen made (a DTensor's ``.data``) or by
storage (a plain tensor's ``.data``); how many whole fills each got (the
*n* of its next key); which storages hold values that depend on the layout,
and the model tensors written from them.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..compat import local_tensor
from ..planning.layout import is_sharded


def storage(t: Tensor) -> int:
    """The data pointer of a tensor's storage (its local shard's, for a DTensor)."""
    if is_sharded(t):
        t = local_tensor(t)
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def covers(a: Tensor, t: Tensor) -> bool:
    """``a`` is ``t`` or covers exactly its elements in the same order (``.data``, a full
    view); for DTensors, the same global shape over the same local elements."""
    if a is t:
        return True
    if a.dtype != t.dtype or tuple(a.shape) != tuple(t.shape):
        return False
    if is_sharded(a) != is_sharded(t):
        return False
    if is_sharded(a):
        if tuple(a.placements) != tuple(t.placements):
            return False
        a, t = local_tensor(a), local_tensor(t)
    return (a.storage_offset() == t.storage_offset() and a.stride() == t.stride()
            and storage(a) == storage(t))


class Books:
    """One run's record of user code's draws, shared by the watches of every thread it uses."""

    def __init__(self, seed: int, call_key: str, root: nn.Module,
                 fills: dict[str, int] | None = None,
                 moves: Callable[[], int] = lambda: 0) -> None:
        self.seed, self.call_key, self.root = seed, call_key, root
        #: a count that changes whenever the run moves a model tensor to another storage
        self.moves = moves
        self._stamp = -1
        self.lock = threading.RLock()
        #: name -> whole fills drawn so far in the run (the n of its next key)
        self.fills: dict[str, int] = {} if fills is None else fills
        self.temps = 0
        #: storage -> why the values there depend on the layout
        self.tainted: dict[int, str] = {}
        #: id of a model tensor -> (tensor, name, why its values depend on the layout)
        self.dependent: dict[int, tuple[Tensor, str, str]] = {}
        #: id of a model tensor user code wrote (on every rank, even one holding none of it)
        self.written: dict[int, Tensor] = {}
        self._index: dict[int, list[tuple[str, Tensor]]] | None = None
        self._by_id: dict[int, tuple[str, Tensor]] | None = None
        #: id of a view of a model tensor -> (weak reference, (name, tensor), covers it whole)
        self.aliases: dict[int, tuple[Any, tuple[str, Tensor], bool]] = {}
        #: the seed of the seeded section's own generators (handed to calls made without
        #: one; they reach an op as new Python objects, so they are told by their seed)
        self.section_seed: int | None = None

    def explicit(self, generator: Any) -> bool:
        """``generator`` was passed by the user code (not the seeded section's own)."""
        return generator is not None and generator.initial_seed() != self.section_seed

    def index(self) -> dict[int, list[tuple[str, Tensor]]]:
        """The model's parameters and buffers by storage (a DTensor's by its local one)."""
        if self._index is None or self._stamp != self.moves():
            self._stamp = self.moves()
            self._by_id = None
            index: dict[int, list[tuple[str, Tensor]]] = {}
            named = list(self.root.named_parameters()) + list(self.root.named_buffers())
            for name, t in named:
                if t.device.type != "meta":
                    index.setdefault(storage(t), []).append((name, t))
            index.pop(0, None)
            self._index = index
        return self._index

    def _named(self) -> dict[int, tuple[str, Tensor]]:
        self.index()  # (rebuilt, and this with it, when the run moved tensors)
        if self._by_id is None:
            self._by_id = {id(t): (n, t) for n, t in (list(self.root.named_parameters())
                                                      + list(self.root.named_buffers()))}
        return self._by_id

    def model_tensor(self, a: Tensor) -> tuple[str, Tensor] | None:
        """The model tensor ``a`` covers whole, with its name: the tensor itself, a view of it
        seen made (a DTensor's ``.data``), or a tensor over the same elements of its storage
        (a plain tensor's ``.data``). Never decided by what a rank holds (an empty shard has
        no storage to compare)."""
        hit = self._named().get(id(a))
        if hit is None and isinstance(a, nn.Parameter):  # one user code set meanwhile
            self._index = None
            hit = self._named().get(id(a))
        if hit is not None and hit[1] is a:
            return hit
        alias = self.aliases.get(id(a))
        if alias is not None and alias[0]() is a:
            return alias[1] if alias[2] else None
        if is_sharded(a):
            return None
        for name, t in self.index().get(storage(a), ()):
            if covers(a, t):
                return name, t
        return None

    def owners(self, a: Tensor) -> list[tuple[str, Tensor]]:
        """The model tensors ``a`` shares memory with."""
        alias = self.aliases.get(id(a))
        if alias is not None and alias[0]() is a:
            return [alias[1]]
        hit = self._named().get(id(a))
        if hit is not None and hit[1] is a:
            return [hit]
        return self.index().get(storage(a), [])

    def annotate(self, entries: dict[int, tuple[Tensor, Any]], entry: Any = None) -> None:
        """Note in the record ``entries`` (tensor id -> (tensor, entry)) the tensors user code
        wrote from values that depend on the layout. With ``entry`` (sharded runs, which
        compare values instead of watching), the tensors the draws saw written get it too: a
        rank holding none of a tensor records it as every rank does."""
        if entry is not None:
            for tensor in self.written.values():
                entries[id(tensor)] = (tensor, entry)
        for tensor, _, why in self.dependent.values():
            hit = entries.get(id(tensor))
            if hit is not None:
                entries[id(tensor)] = (tensor, dataclasses.replace(hit[1], layout=why))

    def saw_view(self, source: Any, view: Any) -> None:
        """``view`` was made from ``source``: remember it if ``source`` is (part of) a model
        tensor, and whether it covers that tensor whole."""
        if not isinstance(source, Tensor) or not isinstance(view, Tensor):
            return
        owners = self.owners(source)
        if len(owners) != 1:
            return
        whole = self.model_tensor(source) is not None and tuple(view.shape) == tuple(
            owners[0][1].shape) and (not is_sharded(view) or tuple(view.placements) == tuple(
                owners[0][1].placements))
        self.aliases[id(view)] = (weakref.ref(view), owners[0], whole)


__all__ = ["Books", "covers", "storage"]
