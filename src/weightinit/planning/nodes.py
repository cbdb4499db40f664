"""What the planner walks: modules carrying an ``init_cfg``, and whether their
``init_weights`` is the planned one or user code.

A *node* is a :class:`InitCfgNode` (weightinit's ``BaseModule``) or an instance
of a class registered with :func:`register_node_type` (the MMEngine bridge
registers MMEngine's ``BaseModule``). A node is *planned* when its class's
``init_weights`` is marked by :func:`planned` and not overridden: the planner
then knows its effect and walks it; any other ``init_weights`` is user code,
run (and watched) where MMEngine would call it.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from typing import Any

import torch.nn as nn

#: marks the ``init_weights`` whose effect the planner knows (BaseModule's own)
PLANNED = "__weightinit_planned__"
_NODE_TYPES: list[type] = []


def planned(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``fn`` as the planned ``init_weights``: a module using it is walked, not called."""
    setattr(fn, PLANNED, True)
    return fn


class InitCfgNode(nn.Module):
    """A module that carries an ``init_cfg`` and an ``is_init`` flag (BaseModule's data)."""

    def _setup_init(self, init_cfg: Any) -> None:
        self._is_init = False
        self.init_cfg = copy.deepcopy(init_cfg)

    @property
    def is_init(self) -> bool:
        return self._is_init

    @is_init.setter
    def is_init(self, value: bool) -> None:
        self._is_init = value


_NODE_TYPES.append(InitCfgNode)
_node_types: tuple[type, ...] = (InitCfgNode,)


def register_node_type(cls: type) -> None:
    """Treat instances of ``cls`` (with ``init_cfg`` and ``is_init``) as nodes."""
    global _node_types
    if cls not in _NODE_TYPES:
        _NODE_TYPES.append(cls)
        _node_types = tuple(_NODE_TYPES)
        _IS_NODE.clear()


def unregister_node_type(cls: type) -> None:
    global _node_types
    if cls in _NODE_TYPES and cls is not InitCfgNode:
        _NODE_TYPES.remove(cls)
        _node_types = tuple(_NODE_TYPES)
        _IS_NODE.clear()


#: module class -> whether its instances are nodes, while ``abc``'s cache token (which moves
#: when any ABC registers a class: MMCV's ``BaseModule`` is one) is the one kept here
_IS_NODE: dict[type, bool] = {}
_TOKEN: list[object] = [abc.get_cache_token()]


def is_node(module: nn.Module) -> bool:
    """``module`` carries an ``init_cfg`` the planner reads (an ``isinstance`` against the
    node types, once per class: against an ABC it is a call into Python)."""
    cls = type(module)
    token = abc.get_cache_token()
    if token != _TOKEN[0]:
        _IS_NODE.clear()
        _TOKEN[0] = token
    hit = _IS_NODE.get(cls)
    if hit is None:
        hit = isinstance(module, _node_types)
        if cls is module.__class__:  # (a proxy's own answer is never kept)
            _IS_NODE[cls] = hit
    return hit


def is_planned(module: nn.Module) -> bool:
    """A node whose ``init_weights`` is ours (not overridden), so its effect can be planned."""
    fn = getattr(type(module), "init_weights", None)
    return (is_node(module) and getattr(fn, PLANNED, False)
            and "init_weights" not in vars(module))


def post_order(module: nn.Module) -> list[nn.Module]:
    """Modules of the subtree in ``nn.Module.apply`` order: children first, then the module."""
    out: list[nn.Module] = []
    seen: set[int] = set()
    stack: list[tuple[nn.Module, Any]] = [(module, iter(module.children()))]
    while stack:
        m, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            out.append(m)
        elif id(child) not in seen:
            seen.add(id(child))
            stack.append((child, iter(child.children())))
    return out


__all__ = ["PLANNED", "InitCfgNode", "is_node", "is_planned", "planned", "post_order",
           "register_node_type", "unregister_node_type"]
