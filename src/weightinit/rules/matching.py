"""Which modules a rule's ``layer`` names: class-name matching.

weightinit matches a module when its class or any class it inherits from has
the name; MMEngine only looks at the class and its direct bases. The MMEngine
bridge's runs use MMEngine's rule: its ``init_weights`` plans inside
:func:`layer_matching` ``("bases")``, which holds for that call only (a context
variable), never for other threads or other runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch.nn as nn

from ..errors import InitValueError

#: the matching modes: ``"mro"`` — the class and every class it inherits from (weightinit's);
#: ``"bases"`` — the class and its direct bases only (MMEngine's)
MODES = ("mro", "bases")
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("weightinit_layer_matching",
                                                            default="mro")


def current_layer_matching() -> str:
    """The matching mode of the running call (``"mro"`` outside any :func:`layer_matching`)."""
    return _MODE.get()


@contextlib.contextmanager
def layer_matching(mode: str) -> Iterator[None]:
    """Match ``layer`` names by ``mode`` in the block, in this thread or task only."""
    if mode not in MODES:
        raise InitValueError(f"layer matching mode must be one of {', '.join(MODES)}, got "
                             f"{mode!r}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def class_names(cls: type) -> frozenset[str]:
    """Names ``layer`` matches for ``cls``: its own and those of the classes it inherits
    from (all of them, or only its direct bases under MMEngine's rule)."""
    return _base_names(cls) if _MODE.get() == "bases" else _mro_names(cls)


@functools.cache
def _mro_names(cls: type) -> frozenset[str]:
    return frozenset(c.__name__ for c in cls.__mro__)


@functools.cache
def _base_names(cls: type) -> frozenset[str]:
    return frozenset([cls.__name__, *(b.__name__ for b in cls.__bases__)])


def layer_matches(module: nn.Module, layers: tuple[str, ...] | list[str]) -> bool:
    """True if the module's class, or any class it inherits from, is named in ``layers``.

    MMEngine looks at the class and its direct bases only; following the
    whole inheritance chain also matches ``class MyConv(BaseConv(nn.Conv2d))``
    against ``layer='Conv2d'``.
    """
    return not class_names(type(module)).isdisjoint(layers)


__all__ = ["MODES", "class_names", "current_layer_matching", "layer_matches", "layer_matching"]
