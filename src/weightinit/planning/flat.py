"""One walk of a module tree, kept for the questions a run asks about it many times.

A run asks which modules are under its root, the full name of a tensor, every parameter
with its name, whether some tensor is sharded or on ``meta``, ... Each of torch's
``named_modules``/``named_parameters``/``named_buffers`` walks the whole tree again (a
chain of generators, one level per depth). :class:`Flat` walks it once and answers all
of them, with torch's names, order and sharing rule (each module and tensor once, under the
first name it is reached by). The run that keeps one must drop it when the tree changes
(see :meth:`weightinit.planning.tree.PlanningCache.restructured`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch.nn as nn
from torch import Tensor

#: what a module class may override to show torch's walks another tree (FSDP1 wrappers)
_WALKS = ("named_modules", "modules", "named_parameters", "parameters", "named_buffers",
          "buffers", "_named_members", "named_children", "children")
_plain_types: dict[type, bool] = {}


def _is_plain(cls: type) -> bool:
    """``cls`` walks its tree as ``nn.Module`` does (none of the walks overridden)."""
    hit = _plain_types.get(cls)
    if hit is None:
        hit = _plain_types[cls] = all(getattr(cls, n, None) is getattr(nn.Module, n)
                                      for n in _WALKS)
    return hit


def _walk(root: nn.Module, prefix: str = ""
          ) -> tuple[list[tuple[str, nn.Module]], list[int]] | None:
    """``list(root.named_modules(prefix=prefix))`` and, when no module is reached twice, where
    each module's subtree ends in that list (else ``[]``); None where a module overrides
    torch's walks (then torch's own are asked)."""
    out: list[tuple[str, nn.Module]] = []
    depths: list[int] = []
    seen: set[int] = set()
    shared = False
    stack: list[tuple[str, nn.Module, int]] = [(prefix, root, 0)]
    while stack:
        prefix, m, depth = stack.pop()
        if id(m) in seen:
            shared = True
            continue
        if not _is_plain(type(m)):
            return None
        seen.add(id(m))
        out.append((prefix, m))
        depths.append(depth)
        children = m._modules
        if children:
            dot = f"{prefix}." if prefix else ""
            stack.extend([(dot + k, c, depth + 1) for k, c in reversed(children.items())
                          if c is not None])
    if shared:
        return out, []
    ends = [len(out)] * len(out)
    open_: list[int] = []  # pre-order: a subtree ends where the next module not deeper starts
    for i, depth in enumerate(depths):
        while open_ and depths[open_[-1]] >= depth:
            ends[open_.pop()] = i
        open_.append(i)
    return out, ends


class Flat:
    """The modules, parameters and buffers under ``root`` as torch's ``named_*`` walks give
    them, walked once; plus lookups by identity (membership, a module's path, a tensor's
    name)."""

    __slots__ = ("root", "named_modules", "named_parameters", "named_buffers", "_ends",
                 "_modules", "_index", "_paths", "_names", "_tensors")

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        walked = _walk(root)
        if walked is None:
            self.named_modules = list(root.named_modules())
            self.named_parameters = list(root.named_parameters())
            self.named_buffers = list(root.named_buffers())
            self._ends: list[int] = []
        else:
            self.named_modules, self._ends = walked
            self.named_parameters, self.named_buffers = _tensors(self.named_modules)
        self._modules: list[nn.Module] | None = None
        self._index: dict[int, int] | None = None
        self._paths: dict[int, str] | None = None
        self._names: dict[int, str] | None = None
        self._tensors: list[Tensor] | None = None

    @property
    def modules(self) -> list[nn.Module]:
        """``list(root.modules())``."""
        if self._modules is None:
            self._modules = [m for _, m in self.named_modules]
        return self._modules

    @property
    def tensors(self) -> list[Tensor]:
        """``list(root.parameters()) + list(root.buffers())``."""
        if self._tensors is None:
            self._tensors = ([p for _, p in self.named_parameters]
                             + [b for _, b in self.named_buffers])
        return self._tensors

    def _position(self, module: nn.Module) -> int | None:
        if self._index is None:
            self._index = {id(m): i for i, (_, m) in enumerate(self.named_modules)}
        return self._index.get(id(module))

    def contains(self, module: nn.Module) -> bool:
        return self._position(module) is not None

    def subtree(self, module: nn.Module) -> list[nn.Module]:
        """``list(module.modules())`` for a module of the tree (a slice of the walk when no
        module is shared; otherwise walked, as a module reached twice is listed once)."""
        i = self._position(module)
        if i is not None and self._ends:
            return self.modules[i:self._ends[i]]
        return list(module.modules())

    def named_subtree(self, module: nn.Module) -> list[tuple[str, nn.Module]]:
        """:meth:`subtree` with each module's full name (:func:`named_subtree`)."""
        i = self._position(module)
        if i is not None and self._ends:
            return self.named_modules[i:self._ends[i]]
        return named_subtree(module, self.path(module, ""))

    def path(self, module: nn.Module, default: str = "?") -> str:
        """``module``'s full name under the root (``""`` for the root itself)."""
        if self._paths is None:
            self._paths = {id(m): n for n, m in self.named_modules}
        return self._paths.get(id(module), default)

    def name_of(self, tensor: Any) -> str | None:
        """A parameter's or buffer's full name (a parameter's name wins for a tensor that is
        both); None for a tensor not in the tree."""
        if self._names is None:
            self._names = {id(t): n for n, t in (*self.named_buffers, *self.named_parameters)}
        return self._names.get(id(tensor))


def _tensors(named_modules: list[tuple[str, nn.Module]]
             ) -> tuple[list[tuple[str, Tensor]], list[tuple[str, Tensor]]]:
    params: list[tuple[str, Tensor]] = []
    buffers: list[tuple[str, Tensor]] = []
    seen_p: set[int] = set()
    seen_b: set[int] = set()
    for prefix, m in named_modules:
        dot = f"{prefix}." if prefix else ""
        for k, p in m._parameters.items():
            if p is not None and id(p) not in seen_p:
                seen_p.add(id(p))
                params.append((dot + k, p))
        if m._buffers:
            for k, b in m._buffers.items():
                if b is not None and id(b) not in seen_b:
                    seen_b.add(id(b))
                    buffers.append((dot + k, b))
    return params, buffers


def named_subtree(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """``list(module.named_modules(prefix=prefix))``, walked as :class:`Flat` walks."""
    walked = _walk(module, prefix)
    return walked[0] if walked is not None else list(module.named_modules(prefix=prefix))


class Walks:
    """The walk of one tree, shared by what asks about it during one run; dropped when the
    tree changes (:meth:`restructured`) and walked again when next asked."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self._flat: Flat | None = None

    def flat(self) -> Flat:
        if self._flat is None:
            self._flat = Flat(self.root)
        return self._flat

    def restructured(self) -> None:
        self._flat = None


_SHARED: ContextVar[Walks | None] = ContextVar("weightinit_walks", default=None)


@contextlib.contextmanager
def shared_walks(root: nn.Module) -> Iterator[Walks]:
    """Within the block, :func:`walks_of` ``root`` is this one walk (a bridge's info around a
    run and the run share it)."""
    walks = _SHARED.get()
    if walks is not None and walks.root is root:
        yield walks
        return
    token = _SHARED.set(walks := Walks(root))
    try:
        yield walks
    finally:
        _SHARED.reset(token)


def walks_of(root: nn.Module) -> Walks:
    """The walk of ``root`` a block of :func:`shared_walks` shares, or a new one."""
    walks = _SHARED.get()
    return walks if walks is not None and walks.root is root else Walks(root)


__all__ = ["Flat", "Walks", "named_subtree", "shared_walks", "walks_of"]
